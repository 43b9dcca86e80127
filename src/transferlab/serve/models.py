"""A model as the server holds it: how an upload is checked and decoded, and the batch forward that
gives the same records as `transferlab predict --json`."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..core.errors import ImageReadError
from ..data.images import open_image
from ..runs.folder import is_run_folder

# what the content must be, whatever the file name or the Content-Type say
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"})


class UploadError(Exception):
    """An upload the server refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def sniff_and_open(data: bytes, max_pixels: int, min_size: int | None = None) -> Image.Image:
    """Check an upload by its content (format, pixel count from the header) and decode it upright RGB;
    a decompression bomb is refused before any pixel is decoded."""
    if not data:
        raise UploadError(400, "empty upload: no image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:  # reads the header only
                fmt, (w, h) = probe.format, probe.size
    except UnidentifiedImageError:
        raise UploadError(415, "not an image: the content is none of JPEG, PNG, GIF, WebP, BMP, TIFF") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(413, f"image has too many pixels (limit {max_pixels})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UploadError(400, f"unreadable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if fmt not in ALLOWED_FORMATS:
        raise UploadError(415, f"image format {fmt} is not accepted; send JPEG, PNG, GIF, WebP, BMP or TIFF")
    if w * h > max_pixels:
        raise UploadError(413, f"image has {w}x{h} pixels, over the limit of {max_pixels}")
    try:
        return open_image(io.BytesIO(data), min_size=min_size)
    except ImageReadError as e:
        raise UploadError(400, e.reason) from None


@dataclass
class ServedModel:
    """One model behind /api/models/NAME: a Classifier (ONNX Runtime engine) or a Detector."""

    name: str
    net: object
    source: str
    threads: int = field(default_factory=torch.get_num_threads)
    # classifier engine, as predict's --backend (deploy.runtime.choose_engine)
    backend: str = "auto"
    max_drop: float | None = None
    _engine: object = field(default=None, init=False, repr=False)

    @property
    def kind(self) -> str:
        """"classifier" or "detector"."""
        return self.net.kind

    @property
    def run(self) -> Path | None:
        """The run folder this model came from, or None for a registry model."""
        return Path(self.source) if is_run_folder(self.source) else None

    def warm_up(self) -> None:
        """Build the engine (ONNX export for a classifier) and run it once, before the first request."""
        if self.kind == "classifier":
            size = self.net.preprocessing.input_size
            self.forward([(np.zeros((size, size, 3), np.uint8), (1, None), "warm-up")])
        else:
            self.forward([(np.zeros((64, 64, 3), np.uint8), None, "warm-up")])

    def describe(self) -> dict:
        """name, kind, classes, preprocessing, metrics (from model.json for a run), source; a classifier's
        multilabel (several labels per image), thresholds (each label's decision threshold, or None) and tta
        (whether its records average each image with its mirror)."""
        meta = getattr(self.net, "meta", None) or {}
        if self.kind == "classifier":
            pre = self.net.preprocessing.to_dict()
            classes = list(self.net.classes)
        else:
            pre = {"input_size": self.net.input_size, "letterbox": True, "range": [-1, 1]}
            classes = ["face"]
            if self.run is not None:
                from ..runs.folder import read_meta

                meta = read_meta(self.run)
        thresholds = getattr(self.net, "thresholds", None)
        return {"name": self.name, "kind": self.kind, "source": self.source if self.run is None else self.run.name,
                "run": self.run is not None, "classes": classes, "num_classes": len(classes),
                "multilabel": thresholds is not None, "thresholds": thresholds,
                "tta": bool(getattr(self.net, "tta", False)),
                "preprocessing": pre, "metrics": meta.get("metrics", {}),
                "architecture": meta.get("architecture", self.source)}

    def decode(self, data: bytes, filename: str, max_pixels: int, top: int, threshold: float | None):
        """An upload -> the item the batch forward takes (runs in a worker thread, off the event loop):
        a classifier's resized centre crop as uint8 pixels, normalised later with its whole batch, with
        (top, threshold) (threshold: a multi-label classifier's one for every label, or None)."""
        if self.kind == "classifier":
            img = sniff_and_open(data, max_pixels, min_size=self.net.preprocessing.resize)
            return self.transform.crop(img), (top, threshold), filename
        return np.asarray(sniff_and_open(data, max_pixels)), threshold, filename

    def forward(self, items: list) -> list[dict]:
        """A batch of decoded items -> one record per item, the shape of `predict --json`."""
        if self.kind == "classifier":
            return self._classify(items)
        return self._detect(items)

    @cached_property
    def transform(self):
        """The classifier's EvalTransform: crop() per upload, normalize() per batch."""
        return self.net.transform

    def engine(self):
        """The classifier's engine, chosen as predict chooses (a registry model has no int8 export).
        Chosen once: the served weights never change, and the classifier's own check that its engine
        matches its weights hashes every parameter (~20 ms, once per batch otherwise)."""
        if self._engine is None:
            from ..deploy.runtime import choose_engine

            def int8(required):
                return self.net.int8_forward(self.threads, required, self.max_drop) if self.run is not None else None

            backend, engine = choose_engine(self.backend, torch.device("cpu"), 1, int8, self.max_drop,
                                            engine_ready=True)  # a server runs many images: export once
            self._engine = self.net.with_tta(engine if engine is not None else (
                self.net.onnx_forward(self.threads) if backend == "onnxruntime" else self.net.logits))
        return self._engine

    def _classify(self, items: list) -> list[dict]:
        engine = self.engine()
        batch = self.transform.normalize(np.stack([x for x, _, _ in items]))
        with torch.inference_mode():
            logits = engine(batch).float()
        # the records of `predict`: softmax top-k, or a multi-label classifier's sigmoid scores and labels
        return [{"path": name, "status": "ok", **self.net.score_records(logits[row:row + 1], top, threshold)[0]}
                for row, (_, (top, threshold), name) in enumerate(items)]

    def explain(self, items: list, records: list[dict], class_name: str | None = None,
                method: str = "gradcam") -> None:
        """Each classifier record gains "heatmap" (a PNG data URI: the class-activation map of its top class,
        `class_name`, or a multi-label record's first label, over the image the model saw) and
        "heatmap_class"; run in the model's inference thread (DynamicBatcher.run_exclusive)."""
        import base64

        from ..inference.explain import explain_crops, explained_classes

        classes = [explained_classes(self.net, r, class_name)[0] for r in records]
        for r, c, image in zip(records, classes, explain_crops(self.net, [x for x, _, _ in items], classes, method)):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            r["heatmap"] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            r["heatmap_class"] = self.net.classes[c]

    def _detect(self, items: list) -> list[dict]:
        from ..detect.detector import detection_records

        records: list[dict | None] = [None] * len(items)
        for threshold in {t for _, t, _ in items}:  # one forward per threshold asked for in this batch
            rows = [i for i, (_, t, _) in enumerate(items) if t == threshold]
            found = self.net.detect_arrays([items[i][0] for i in rows], threshold)
            for i, det in zip(rows, found):
                records[i] = {"path": items[i][2], "status": "ok", "detections": detection_records(det)}
        return records


def load_models(models, backend: str = "auto", max_drop: float | None = None,
                tta: bool | None = None) -> list[ServedModel]:
    """Registry names, run folders (either kind) or loaded models -> ServedModels with unique names.
    tta: test-time augmentation on or off for every classifier loaded here (default: each run's)."""
    from ..api import load

    served, names = [], set()
    for m in models:
        net = m if hasattr(m, "kind") else load(str(m))
        if tta is not None and net.kind == "classifier":
            net.tta = tta
        source = str(getattr(net, "source", "") or getattr(net, "name", "") or m) if hasattr(m, "kind") else str(m)
        base = Path(source).name if is_run_folder(source) else source
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in base).strip(".") or "model"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.add(name)
        served.append(ServedModel(name, net, source, backend=backend, max_drop=max_drop))
    return served
