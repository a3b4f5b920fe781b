"""The models: the LVM (next chunk vector) and the two towers of the retriever."""
