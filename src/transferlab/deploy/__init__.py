"""ONNX deployment shared by every task: graph export, ONNX Runtime engines, int8/fp16 quantization."""
