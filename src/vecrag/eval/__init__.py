"""Evaluation drivers: each measures a trained model or the decoder next to its baselines on held-out
articles (baselines, lvm, retriever, cascade, decode, generate rollouts) or calibrates decoding on VAL."""
