"""Using a classifier: the Classifier, its evaluation and its export (plain, or quantized and measured)."""
