"""Face detection: MediaPipe BlazeFace in PyTorch, with evaluation and ONNX export; fine-tuning runs on the
one training engine (transferlab.train(data, model="blazeface_front"), tasks/detection.py).

    from transferlab.detect import detect
    detect("group.jpg", model="blazeface_back")   # -> [{"path", "status", "detections": [...]}]

The .tflite weight parser is imported only when pretrained weights are first converted.
"""
from ..core.lazy import lazy_exports as _lazy_exports

__all__ = ["Detector", "FaceDataset", "detect", "evaluate_detector", "export_onnx", "load_detector", "load_faces"]
__getattr__, __dir__ = _lazy_exports(__name__, {
    "FaceDataset": "data", "load_faces": "data", "Detector": "detector", "detect": "detector",
    "load_detector": "detector", "evaluate_detector": "evaluate", "export_onnx": "export",
})
