"""vecrag.train"""
