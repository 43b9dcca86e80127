"""Face detection: MediaPipe BlazeFace in PyTorch, with fine-tuning, evaluation and ONNX export.

    from transferlab.detect import detect
    detect("group.jpg", model="blazeface_back")   # -> [{"image", "score", "box", "keypoints"}, ...]

The .tflite weight parser is imported only when pretrained weights are first converted.
"""
from .data import FaceDataset, load_faces
from .detector import Detector, detect, load_detector
from .evaluate import evaluate_detector
from .export import export_onnx
from .train import TrainConfig, train

__all__ = ["Detector", "FaceDataset", "TrainConfig", "detect", "evaluate_detector", "export_onnx",
           "load_detector", "load_faces", "train"]
