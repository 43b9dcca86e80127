"""Using a model: the Classifier, the ONNX Runtime engine, evaluation, export."""
