"""vecrag.decode"""
