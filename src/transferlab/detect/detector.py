"""Face detection with a pretrained or fine-tuned BlazeFace: `detect()` and `load_detector()`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..core.errors import CheckpointError, ImageReadError, TransferlabError
from ..core.io import load_state_dict_file
from ..core.options import DEFAULT_DETECTOR
from ..data.images import find_images
from ..runs.folder import read_meta
from .anchors import generate_anchors
from .boxes import Detections, decode, weighted_nms
from .image import letterbox, load_image, to_tensor
from .model import CONFIGS, BlazeFace, build_model
from .weights import load_pretrained

PROGRESS_MIN_IMAGES = 8

DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_IOU_THRESHOLD = 0.3
# MediaPipe clips logits before the sigmoid; kept so scores match the reference exactly
_LOGIT_CLIP = 100.0


class Detector:
    """A BlazeFace network plus its anchors and post-processing thresholds."""

    def __init__(self, model: BlazeFace, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 iou_threshold: float = DEFAULT_IOU_THRESHOLD, source: str = ""):
        self.model = model.eval()
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.source = source or model.config.name
        self.centres, self.anchor_sizes = generate_anchors(model.config.anchors)

    @property
    def input_size(self) -> int:
        """The square input side (128 front, 256 back)."""
        return self.model.config.input_size

    @property
    def kind(self) -> str:
        """The run kind this model is ("detector")."""
        return "detector"

    def predict(self, images, score_threshold: float | None = None, batch_size: int = 32,
                progress: bool | None = None) -> list[dict]:
        """Faces in image files, folders or globs: one record per image, unreadable ones included.

        Records: {"path", "status" ("ok" or why it could not be read), "detections": [{"score",
        "box" [xmin, ymin, xmax, ymax], "keypoints" [[x, y] x 6]}]} in the image's upright pixels.
        """
        paths = find_images(images)
        records: list[dict] = []
        show = progress if progress is not None else len(paths) > PROGRESS_MIN_IMAGES
        for start in tqdm(range(0, len(paths), batch_size), desc="detect", disable=not show, leave=False):
            arrays, rows = [], []
            for path in paths[start:start + batch_size]:
                try:
                    arrays.append(load_image(path))
                    rows.append({"path": str(path), "status": "ok", "detections": []})
                except ImageReadError as e:
                    rows.append({"path": str(path), "status": e.reason, "detections": []})
            found = iter(self.detect_arrays(arrays, score_threshold))
            for row in rows:
                if row["status"] == "ok":
                    row["detections"] = detection_records(next(found))
            records += rows
        return records

    def postprocess(self, regressors: torch.Tensor, logits: torch.Tensor,
                    score_threshold: float | None = None) -> list[Detections]:
        """Raw outputs for a batch -> per-image detections, normalised to the model input."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        scores = torch.sigmoid(logits.clamp(-_LOGIT_CLIP, _LOGIT_CLIP))
        boxes, keypoints = decode(regressors, self.centres.to(regressors.device), self.input_size)
        out = []
        for b, k, s in zip(boxes, keypoints, scores):
            keep = s >= threshold
            out.append(weighted_nms(b[keep], k[keep], s[keep], self.iou_threshold))
        return out

    @torch.no_grad()
    def detect_arrays(self, images: list[np.ndarray], score_threshold: float | None = None,
                      batch_size: int = 32) -> list[Detections]:
        """HxWx3 uint8 RGB images -> detections in each image's pixel coordinates."""
        device = next(self.model.parameters()).device
        results = []
        for start in range(0, len(images), batch_size):
            boxed = [letterbox(im, self.input_size) for im in images[start:start + batch_size]]
            batch = torch.stack([to_tensor(x) for x, _ in boxed]).to(device)
            for (_, lb), det in zip(boxed, self.postprocess(*self.model(batch), score_threshold)):
                corners = lb.to_image(det.boxes.cpu().unflatten(-1, (2, 2)), self.input_size)
                results.append(Detections(corners.flatten(-2), lb.to_image(det.keypoints.cpu(), self.input_size),
                                          det.scores.cpu()))
        return results


def load_detector(model: str | Path = DEFAULT_DETECTOR, device: str | torch.device = "cpu") -> Detector:
    """A pretrained architecture name (blazeface_front, blazeface_back) or a fine-tuned run folder."""
    if str(model) in CONFIGS:
        return Detector(load_pretrained(str(model)).to(device))
    run = Path(model)
    if not (run / "model.json").is_file():
        raise TransferlabError(f"{model}: not a detector name ({', '.join(CONFIGS)}) nor a run folder with model.json")
    meta = read_meta(run, kind="detector")
    if meta.get("architecture") not in CONFIGS:
        raise CheckpointError(f"{run / 'model.json'}: unknown detector architecture {meta.get('architecture')!r}")
    net = build_model(meta["architecture"])
    try:
        net.load_state_dict(load_state_dict_file(run / "model.safetensors"))
    except RuntimeError as e:
        raise CheckpointError(f"{run / 'model.safetensors'}: does not fit {meta['architecture']} "
                              f"({str(e).splitlines()[0]})") from None
    thresholds = meta.get("thresholds", {})
    return Detector(net.to(device), thresholds.get("score", DEFAULT_SCORE_THRESHOLD),
                    thresholds.get("iou", DEFAULT_IOU_THRESHOLD), source=str(run))


def detection_records(det: Detections) -> list[dict]:
    """Detections as JSON-ready dicts: score, box, keypoints (pixels, rounded)."""
    return [{"score": round(float(s), 4),
             "box": [round(float(v), 2) for v in b],
             "keypoints": [[round(float(x), 2), round(float(y), 2)] for x, y in k]}
            for b, k, s in zip(det.boxes, det.keypoints, det.scores)]


def detect(images, model: str | Path | Detector = DEFAULT_DETECTOR,
           score_threshold: float | None = None) -> list[dict]:
    """Detect faces: one record per image (see Detector.predict), each face with its score, box
    [xmin, ymin, xmax, ymax] and six keypoints (right eye, left eye, nose, mouth, right ear, left ear)
    in the image's upright pixels. `images`: files, folders, globs, or in-memory PIL images / uint8
    arrays (named image0, image1, ...)."""
    detector = model if isinstance(model, Detector) else load_detector(model)
    items = images if isinstance(images, (list, tuple)) else [images]
    if not any(isinstance(im, (np.ndarray, Image.Image)) for im in items):
        return detector.predict(items, score_threshold)
    dets = detector.detect_arrays([load_image(im) for im in items], score_threshold)
    return [{"path": f"image{i}", "status": "ok", "detections": detection_records(d)} for i, d in enumerate(dets)]
