"""vecrag.eval"""
