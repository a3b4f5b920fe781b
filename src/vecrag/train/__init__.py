"""Training: one loop shared by the LVM and the retriever (one explicit state dict is the checkpoint), their
tasks and losses, checkpoints and distributed helpers; hard-negative mining lives in vecrag.train.mining."""
