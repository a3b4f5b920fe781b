"""vecrag.corpus"""
