"""vecrag.serve"""
