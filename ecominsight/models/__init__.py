"""Models: the logistic-regression baseline, the fine-tuned transformer, scoring and the registry."""
