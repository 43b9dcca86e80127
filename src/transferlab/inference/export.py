"""A classifier's export: TorchScript or ONNX checked against PyTorch, with a sidecar that says how to
feed it; or a quantized ONNX (int8/fp16, deploy/quantize.py) measured by accuracy (mAP for a
multi-label classifier) on the run's validation split before it is kept."""
from __future__ import annotations

import random
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import DatasetError, ImageReadError, TransferlabError
from ..core.io import atomic_path, atomic_write_json
from ..data.folders import Sample, scan_dataset
from ..data.tables import is_table, recorded_data
from ..data.images import open_image
from ..data.transforms import EvalTransform
from ..deploy.export import ExportResult, check_format, default_export_path
from ..deploy.quantize import (DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_METHOD, DEFAULT_MAX_DROP,
                               ImageCalibrationReader, check_options, float16_model, images_per_second, int8_model,
                               publish, static_float_model)
from ..deploy.runtime import cpu_session, export_onnx, weights_fingerprint
from .classifier import Classifier


def export_classifier(clf: Classifier, format: str = "onnx", out=None, batch: int = 2,
                      check: bool = True, quantize: str | None = None, **quantize_options) -> ExportResult:
    """Write the exported classifier and its .json sidecar (input, output, preprocessing, classes).

    quantize: "int8" or "fp16" (ONNX only), measured on the run's validation split and refused above
    max_drop accuracy points (mAP points for a multi-label classifier); options: max_drop, calibration, calibration_method, data (see quantize_classifier).
    """
    check_format(format)
    if quantize is not None:
        if format != "onnx":
            raise TransferlabError("--quantize applies to --format onnx")
        path, sidecar, report = quantize_classifier(clf, quantize, out, sidecar=sidecar_dict(clf, format, None),
                                                    **quantize_options)
        return ExportResult(path, sidecar, format, None, report)
    if quantize_options:
        raise TransferlabError(f"{', '.join(sorted(quantize_options))} appl{'ies' if len(quantize_options) == 1 else 'y'}"
                               " only with --quantize")
    model = clf.model.cpu().eval()
    size = clf.preprocessing.input_size
    torch.manual_seed(0)
    example = torch.randn(batch, 3, size, size)
    path = Path(out) if out else default_export_path(clf.name.replace(":", "_") or "model", format)
    with torch.inference_mode():
        reference = model(example)
    if format == "torchscript":
        diff = _export_torchscript(model, example, path, reference, check)
    else:
        diff = _export_onnx(model, example, path, reference, check)
    sidecar = path.with_suffix(path.suffix + ".json")
    atomic_write_json(sidecar, sidecar_dict(clf, format, diff))
    return ExportResult(path, sidecar, format, diff)


def sidecar_dict(clf: Classifier, format: str, diff: float | None) -> dict:
    """The sidecar's content: how to feed the exported model and read its output (a multi-label
    classifier's: a sigmoid per label, and each label's decision threshold)."""
    size = clf.preprocessing.input_size
    output = {"name": "logits", "shape": ["batch", len(clf.classes)], "apply": "softmax for probabilities"}
    if clf.multilabel:
        output["apply"] = ("sigmoid per label for its score; an image carries every label whose score is at or "
                           "above its threshold")
    return {
        "format": format,
        "input": {"name": "image", "shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW RGB"},
        "output": output,
        **({"multilabel": True, "thresholds": list(clf.thresholds)} if clf.multilabel else {}),
        "preprocessing": {
            **clf.preprocessing.to_dict(),
            "steps": ["decode to RGB, apply EXIF orientation",
                      f"resize shorter side to {clf.preprocessing.resize} ({clf.preprocessing.interpolation})",
                      f"centre-crop {size}x{size}", "scale to [0,1]",
                      f"normalise with mean {list(clf.preprocessing.mean)} and std {list(clf.preprocessing.std)}"],
        },
        "classes": list(clf.classes),
        "max_abs_diff_vs_pytorch": diff,
    }


def _export_torchscript(model, example, path: Path, reference, check: bool) -> float | None:
    # TorchScript is deprecated upstream in favour of torch.export, but it is still what C++/mobile
    # runtimes load; the warnings are noise for the user here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(model, example)
        with atomic_path(path) as tmp:
            traced.save(str(tmp))
        if not check:
            return None
        loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        return float((loaded(example) - reference).abs().max())


def _export_onnx(model, example, path: Path, reference, check: bool) -> float | None:
    with atomic_path(path) as tmp:
        export_onnx(model, example, tmp)
    if not check:
        return None
    out = cpu_session(path).run(["logits"], {"image": example.numpy()})[0]
    return float((torch.from_numpy(out) - reference).abs().max())


@dataclass
class Split:
    """The images a quantized export is calibrated and judged on, and the files that could not be read."""

    calibration: list[Path]
    validation: list[Sample]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


def run_split(clf: Classifier, data=None, calibration: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0) -> Split:
    """Calibration images (a class-stratified sample of the training split; by each image's first label
    for multi-label data) and the validation split, of the run's own dataset (reproduced from
    model.json: root, val_split, seed, its table's columns) or of `data`."""
    cfg, dataset = clf.meta.get("config", {}), clf.meta.get("dataset", {})
    if data is None and not dataset.get("root"):
        raise TransferlabError("quantization calibrates on a run's training images: export a run folder, "
                               "or give --data FOLDER (one sub-folder of images per class) or a table")
    root = data if data is not None else recorded_data(dataset)  # a table is read with the run's columns
    if not is_table(root) and not Path(root).is_dir():
        raise DatasetError(f"the run's training data {root} is not on this machine; give --data FOLDER with the "
                           "same class sub-folders, or a table of the same labels")
    scan = scan_dataset(root, val_split=cfg.get("val_split", 0.2), seed=cfg.get("seed", 0), multilabel=clf.multilabel)
    unknown = [c for c in scan.classes if c not in clf.classes]
    if unknown:
        raise DatasetError(f"{root} has class(es) the model does not know: {', '.join(unknown)}")
    remap = [clf.classes.index(c) for c in scan.classes]
    if scan.multilabel:
        validation = [Sample(s.path, -1, tuple(sorted(remap[i] for i in s.indices)))
                      for s in (scan.splits.get("val") or [])]
    else:
        validation = [Sample(s.path, remap[s.label]) for s in (scan.splits.get("val") or [])]
    if not validation:
        raise DatasetError(f"no validation images in {root} to measure the quantized model on")
    train = sorted(scan.splits["train"], key=lambda s: str(s.path))
    by_class: dict[int, list[Path]] = {}
    for s in random.Random(seed).sample(train, len(train)):
        by_class.setdefault(s.indices[0] if s.indices else -1, []).append(s.path)
    picked: list[Path] = []
    while len(picked) < min(calibration, len(train)):  # round robin over classes: every class calibrates
        for paths in by_class.values():
            if paths and len(picked) < calibration:
                picked.append(paths.pop())
    return Split(picked, validation, f"{root} ({scan.split_source})", list(scan.skipped))


def load_tensors(samples: list[Sample], transform, min_size: int | None) -> tuple[torch.Tensor, list, list]:
    """The validation images preprocessed once: (N,3,S,S) batch, labels (a multi-label sample's: the
    indices of its labels), (path, reason) for unreadable ones."""
    tensors, labels, skipped = [], [], []
    for s in samples:
        try:
            tensors.append(transform(open_image(s.path, min_size=min_size)))
            labels.append(s.label if s.labels is None else list(s.labels))
        except ImageReadError as e:
            skipped.append((str(s.path), e.reason))
    if not tensors:
        raise DatasetError("no readable validation image to measure the quantized model on")
    return torch.stack(tensors), labels, skipped


def session_logits(session, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """Logits for every row of x, `batch` rows per call."""
    return np.concatenate([session.run(["logits"], {"image": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def measure(float_path: Path, quant_path: Path, x: np.ndarray, labels: list, threads: int | None,
            speed_seconds: float = 1.0, thresholds: list[float] | None = None) -> dict:
    """Accuracy of both models, their top-1 agreement, file sizes and forward images/s (batch 1 and 32).

    A multi-label classifier's (thresholds: its per-label ones; labels: each image's label indices):
    the mAP of both ("metric": "map"), the share of (image, label) decisions at the thresholds that
    agree, and the drop in mAP points ("drop_points")."""
    from .multilabel import mean_average_precision

    multilabel = thresholds is not None
    if multilabel:
        y = np.zeros((len(labels), len(thresholds)), dtype=bool)
        for row, indices in enumerate(labels):
            y[row, indices] = True
    else:
        y = np.asarray(labels)
    metric = "map" if multilabel else "accuracy"
    result = {}
    decisions = {}
    for name, path in (("float", float_path), ("quantized", quant_path)):
        session = cpu_session(path, threads)
        logits = session_logits(session, x)
        if multilabel:
            scores = 1 / (1 + np.exp(-logits.astype(np.float64)))
            decisions[name], value = scores >= np.asarray(thresholds), mean_average_precision(scores, y)
        else:
            decisions[name] = logits.argmax(1)
            value = float((decisions[name] == y).mean())
        result[name] = {
            metric: value,
            "size_bytes": path.stat().st_size,
            "images_per_s": {str(b): round(images_per_second(session, x, b, speed_seconds), 1) for b in (1, 32)},
        }
    result["agreement"] = float((decisions["float"] == decisions["quantized"]).mean())
    drop = round(100 * (result["float"][metric] - result["quantized"][metric]), 4)
    if multilabel:
        result.update(metric="map", drop_points=drop)
    else:
        result["accuracy_drop_points"] = drop
    return result


def default_quantized_path(clf: Classifier, mode: str) -> Path:
    """RUN/model-int8.onnx for a run folder, NAME-int8.onnx otherwise."""
    name = clf.name.replace(":", "_") or "model"
    return Path(name) / f"model-{mode}.onnx" if Path(name).is_dir() else Path(f"{name}-{mode}.onnx")


def quantize_classifier(clf: Classifier, mode: str = "int8", out=None, max_drop: float = DEFAULT_MAX_DROP,
                        calibration: int = DEFAULT_CALIBRATION_IMAGES,
                        calibration_method: str = DEFAULT_CALIBRATION_METHOD, data=None, threads: int | None = None, speed_seconds: float = 1.0,
                        sidecar: dict | None = None) -> tuple[Path, Path, dict]:
    """Export `clf` quantized (mode int8 or fp16), measured on the validation split; refuse (raise,
    write nothing) when accuracy (a multi-label classifier's mAP) drops more than `max_drop` points. Returns (model path, sidecar
    path, report); the report also goes to the output folder's quantization.json and the sidecar
    (`sidecar`: the float export's sidecar content to extend)."""
    method = calibration_method
    check_options(mode, method, max_drop, calibration)
    split = run_split(clf, data, calibration)
    path = Path(out) if out else default_quantized_path(clf, mode)
    model = clf.model.cpu().eval()
    size = clf.preprocessing.input_size
    transform = EvalTransform(clf.preprocessing)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".quantize-", dir=path.parent))
    try:
        float_path, quant_path = work / "float.onnx", work / "quantized.onnx"
        static_float_model(model, size, float_path)
        reader = None
        started = time.perf_counter()
        if mode == "int8":
            reader = ImageCalibrationReader(split.calibration, transform, min_size=clf.preprocessing.resize)
            if not reader.used:
                raise DatasetError("no calibration image could be read: "
                                   + "; ".join(f"{p}: {why}" for p, why in reader.skipped[:3]))
            int8_model(float_path, quant_path, reader, method)
        else:
            float16_model(float_path, quant_path)
        convert_s = time.perf_counter() - started
        x, labels, unreadable = load_tensors(split.validation, transform, clf.preprocessing.resize)
        numbers = measure(float_path, quant_path, x.numpy(), labels, threads, speed_seconds, clf.thresholds)
        report = {
            "mode": mode,
            "model": path.name,
            "calibration": {"method": method if mode == "int8" else None,
                            "images": reader.used if reader else 0,
                            "skipped": [list(s) for s in reader.skipped] if reader else [],
                            "scheme": "QDQ, per-channel int8 weights, uint8 activations" if mode == "int8"
                            else "float16 weights and activations, float32 inputs/outputs",
                            "seconds": round(convert_s, 2)},
            "validation": {"source": split.source, "images": len(labels), "unreadable": [list(s) for s in unreadable]},
            "dataset_skipped": [list(s) for s in split.skipped],
            **numbers,
            "max_drop_points": max_drop,
            "weights_sha256": weights_fingerprint(model),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        metric = numbers.get("metric", "accuracy")
        drop = numbers["drop_points" if clf.multilabel else "accuracy_drop_points"]
        if drop > max_drop:
            what = "mAP" if clf.multilabel else "accuracy"
            agreement = "label-decision agreement" if clf.multilabel else "top-1 agreement"
            raise TransferlabError(
                f"{mode} quantization would cost {drop:.2f} {what} points (float {numbers['float'][metric]:.4f}, "
                f"{mode} {numbers['quantized'][metric]:.4f}, {agreement} {numbers['agreement']:.1%} on "
                f"{len(labels)} validation images), above --max-drop {max_drop:g}; nothing was written "
                f"(raise --max-drop, or try another --calibration-method or more --calibration images)")
        sidecar_path, report = publish(work, quant_path, path, sidecar, mode, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path, sidecar_path, report
