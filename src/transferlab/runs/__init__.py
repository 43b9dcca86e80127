"""The run folder of either kind (classifier, detector): model.json schema, checkpoints, metrics, report."""
