"""Quantized ONNX exports shared by every task (int8 for CPUs and phones, fp16 for GPUs), measured
before they are kept.

int8 is ONNX Runtime's static quantization: QDQ format, per-channel int8 weights, uint8 activations
(U8S8, the pair x86 VNNI kernels run fastest: measured 1.7-2x float at batch 8-32 on lite0, while
S8S8 ran no faster than float), calibrated on a sample of the run's own training images read
through the run's preprocessing. fp16 is onnxconverter-common's conversion with float inputs and
outputs kept; the shape arithmetic of TF-style "same" padding stays float32.

Before anything is written, the float and the quantized model are measured on the run's validation
split (a classifier: inference/export.py; a detector: detect/quantize.py); a drop above `max_drop`
points raises with the numbers and leaves no file behind.
"""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ImageReadError, TransferlabError
from ..core.io import atomic_write_json
from ..core.options import CALIBRATION_METHODS, QUANTIZE_MODES
from ..data.images import open_image
from .runtime import QUANTIZATION_REPORT, cpu_session, export_onnx


# Chosen by measurement (bench/quantize.py --methods): see DEFAULT_CALIBRATION_WHY.
# lite0 feature-extracted on MNIST at 224 px, 128 calibration images, 250 validation images:
# percentile 84.4% (float 84.0%, agreement 97.6%), minmax and entropy 82.4% (-1.6 points, 94.8%);
# minmax calibrates fastest (25 s vs 69 s) but its ranges follow outliers.
DEFAULT_CALIBRATION_METHOD = "percentile"
DEFAULT_CALIBRATION_IMAGES = 128
DEFAULT_MAX_DROP = 1.0  # accuracy points
CALIBRATION_BATCH = 8
# ONNX inputs whose values are shapes or indices, not activations (kept float32 in fp16 models)
_SHAPE_INPUTS = {"Pad": (1,), "Reshape": (1,), "Slice": (1, 2, 3, 4), "Expand": (1,), "Tile": (1,),
                 "Resize": (1, 2, 3), "ConstantOfShape": (0,)}


class ImageCalibrationReader:
    """ONNX Runtime's CalibrationDataReader over image files, through the model's eval transform.

    The images are decoded once, up front (128 at 224 px: 77 MB); an unreadable one is skipped and
    kept in `skipped` as (path, reason). Batches all have the same size (the largest divisor of the
    readable count up to `batch`): the histogram calibrators stack them. len() and set_range() (in
    batches) let the calibrator collect a few batches at a time.
    """

    def __init__(self, paths, transform, batch: int = CALIBRATION_BATCH, min_size: int | None = None):
        self.skipped: list[tuple[str, str]] = []
        tensors = []
        for p in paths:
            try:
                tensors.append(transform(open_image(p, min_size=min_size)))
            except ImageReadError as e:
                self.skipped.append((str(p), e.reason))
        self.used = len(tensors)
        self.images = torch.stack(tensors).numpy() if tensors else np.zeros((0, 3, 1, 1), np.float32)
        self.batch = next((d for d in range(min(batch, self.used), 0, -1) if self.used % d == 0), 1)
        self._next, self._end = 0, len(self)

    def __len__(self) -> int:
        return self.used // self.batch

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve batches start_index..end_index-1 next."""
        self._next, self._end = start_index, min(end_index, len(self))

    def get_next(self) -> dict | None:
        """The next {'image': float32 NCHW batch}, or None when the range is used up."""
        if self._next >= self._end:
            return None
        self._next += 1
        return {"image": self.images[(self._next - 1) * self.batch:self._next * self.batch]}

    def stride(self, most: int = 4) -> int:
        """Batches per collection: the largest divisor of len() up to `most` (ONNX Runtime's strided
        calibration needs a divisor)."""
        return next(d for d in range(min(most, len(self)), 0, -1) if len(self) % d == 0)


def static_float_model(model: torch.nn.Module, size: int, out: Path, outputs: tuple[str, ...] = ("logits",)) -> None:
    """The float graph with its shape arithmetic folded away, batch axis still free.

    Exported at batch 1 with fixed shapes, ONNX Runtime's basic optimizations fold the dynamic "same"
    padding to constant Pads and BatchNorm into the convolutions; the batch axis is then renamed
    back to a symbol. Quantizing the graph with the shape arithmetic left in cost 12% top-1
    agreement on a 48-px lite0 (logits off by up to 8); folded, 100%. Reshapes to a leading 1 copy
    the batch instead; a graph that still differs from PyTorch at batch 2 is exported as is.
    """
    import onnx
    import onnxruntime as ort

    raw = out.with_name("raw.onnx")
    export_onnx(model, torch.zeros(1, 3, size, size), raw, outputs=outputs, dynamic_batch=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(out))
    for value in list(graph.graph.input) + list(graph.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    initializers = {t.name: t for t in graph.graph.initializer}
    for node in graph.graph.node:  # a Reshape to (1, ...) traced at batch 1: 0 copies the batch instead
        shape = initializers.get(node.input[1]) if node.op_type == "Reshape" else None
        if shape is not None and not any(a.name == "allowzero" and a.i for a in node.attribute):
            values = onnx.numpy_helper.to_array(shape).copy()
            if values.size and values[0] == 1:
                values[0] = 0
                shape.CopyFrom(onnx.numpy_helper.from_array(values, shape.name))
    del graph.graph.value_info[:]  # inferred shapes with batch 1
    onnx.save(graph, str(out))
    raw.unlink(missing_ok=True)
    check = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(check)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    got = cpu_session(out).run(list(outputs), {"image": check.numpy()})
    if any(g.shape != tuple(e.shape) or np.abs(g - e.numpy()).max() > 1e-3 for g, e in zip(got, expected)):
        export_onnx(model, torch.zeros(1, 3, size, size), out, outputs=outputs)  # not foldable: as exported


def float16_model(model_path: Path, out: Path) -> None:
    """fp16 weights and activations, float32 inputs/outputs and shape arithmetic."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(model_path))
    producer = {o: n for n in model.graph.node for o in n.output}
    stack = [n.input[i] for n in model.graph.node for i in _SHAPE_INPUTS.get(n.op_type, ())
             if i < len(n.input) and n.input[i]]
    block: set[str] = set()
    while stack:  # every node computing a shape, back to (and including) the Shape nodes
        node = producer.get(stack.pop())
        if node is None or node.name in block:
            continue
        block.add(node.name)
        if node.op_type != "Shape":
            stack.extend(i for i in node.input if i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(block))
    onnx.save(half, str(out))


def int8_model(model_path: Path, out: Path, reader: ImageCalibrationReader, method: str,
               keep_float=None) -> None:
    """Static QDQ int8: per-channel int8 weights, uint8 activations, ranges from `reader`;
    keep_float(onnx model) -> names of nodes left in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name("prepared.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the calibrators' progress lines and pre-processing advice
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            quant_pre_process(str(model_path), str(prepared))
            exclude = None
            if keep_float is not None:
                import onnx

                exclude = sorted(keep_float(onnx.load(str(prepared))))
            quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method={"minmax": CalibrationMethod.MinMax,
                                              "entropy": CalibrationMethod.Entropy,
                                              "percentile": CalibrationMethod.Percentile}[method],
                            nodes_to_exclude=exclude,
                            # a few batches per collection, merged: entropy and percentile (histograms)
                            # otherwise hold every activation of every calibration image until the end,
                            # ~60 MB per 224-px image for lite0 (7.9 GB peak measured for 128 images)
                            extra_options={"CalibMovingAverage": False, "CalibStridedMinMax": reader.stride()})
    finally:
        root.setLevel(level)
        prepared.unlink(missing_ok=True)


def images_per_second(session, x: np.ndarray, batch: int, seconds: float = 1.0, min_images: int = 32) -> float:
    """Forward throughput at a batch size: after one warm-up call, repeat calls for about `seconds`."""
    x = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
    session.run(["logits"], {"image": x})
    done, start = 0, time.perf_counter()
    while done < min_images or time.perf_counter() - start < seconds:
        session.run(["logits"], {"image": x})
        done += batch
    return done / (time.perf_counter() - start)


def check_options(mode: str, method: str, max_drop: float, calibration: int) -> None:
    """One line for each option out of range."""
    if mode not in QUANTIZE_MODES:
        raise TransferlabError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, not {mode!r}")
    if method not in CALIBRATION_METHODS:
        raise TransferlabError(f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, not {method!r}")
    if max_drop is None or not max_drop >= 0:
        raise TransferlabError(f"--max-drop is accuracy points and must be >= 0, not {max_drop}")
    if calibration < 1:
        raise TransferlabError(f"--calibration must be a positive number of images, not {calibration}")


def publish(work: Path, quant_path: Path, path: Path, sidecar: dict | None, mode: str,
            report: dict) -> tuple[Path, dict]:
    """Move a measured, accepted export from its work folder into place: the model, its sidecar (with
    the report) and the run's quantization.json entry. Returns the sidecar path and the report."""
    sidecar_path = path.with_suffix(path.suffix + ".json")
    atomic_write_json(work / "sidecar.json", {**(sidecar or {}), "quantization": report})
    # everything is measured and written beside the targets: now move them in
    shutil.move(str(quant_path), str(path))
    shutil.move(str(work / "sidecar.json"), str(sidecar_path))
    write_report(path.parent / QUANTIZATION_REPORT, mode, report)
    return sidecar_path, {**report, "report": str(path.parent / QUANTIZATION_REPORT)}


def write_report(path: Path, mode: str, report: dict) -> None:
    """quantization.json holds one report per mode ({"int8": ..., "fp16": ...}); others are kept."""
    import json

    reports = {}
    if path.is_file():
        try:
            reports = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            reports = {}
    reports[mode] = report
    atomic_write_json(path, reports)
