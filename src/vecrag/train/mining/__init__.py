"""Hard negatives for the retriever: the miners (sync, async thread, separate process), their CUDA graphs and
the curriculum that decides what is mined when."""
