"""What every model is measured against: the heuristic predictors (copy-last, mean, ewma) and the retrieval
metrics with their hit rules. Used by the models, training, decoding and evaluation alike."""
