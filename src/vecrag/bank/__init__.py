"""The bank: an ordered store of chunk embeddings (vectors, chunk and article tables, split, lanes), how it is
checked, merged and split, and how a corpus becomes one (encode, ingest)."""
