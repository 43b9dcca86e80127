"""Training a classifier: config, strategies (phases), the trainer and its parts, lr finder, feature cache."""
