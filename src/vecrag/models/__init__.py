"""vecrag.models"""
