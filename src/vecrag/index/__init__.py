"""Search over a bank: FAISS indexes (build, load, GPU), an exact torch search, a torch IVF and top-k helpers."""
