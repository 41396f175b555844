"""Models: the logistic-regression baseline, the fine-tuned transformer, scoring and the registry."""

# The fine-tuned classifier's metadata file (numeric features, max_length) beside its weights. Here, not in
# classifier.py, so that the driver can read it without importing torch and transformers (seconds).
META_FILE = "classifier.json"
