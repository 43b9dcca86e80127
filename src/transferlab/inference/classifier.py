"""A model ready to label images: the network, its classes and its preprocessing."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core.device import CPU_PASS_IMAGES, available_cpus, channels_last_on_cpu, forward_in_passes, pick_device
from ..core.errors import ImageReadError, TransferlabError
from ..data.images import find_images, map_in_threads, open_image
from ..models import BlockNet, create_model, get_spec
from ..data.transforms import EvalTransform, Preprocessing
from .tta import mirrored
from ..deploy.runtime import (ONNX_CACHED_MIN_IMAGES, OnnxRuntimeForward, QuantizedForward, choose_engine,
                              onnx_cache_path, read_quantization_report, weights_fingerprint)

PROGRESS_MIN_IMAGES = 8


@dataclass
class Classifier:
    """A BlockNet with its class names and preprocessing: `predict` labels files, folders and globs."""

    model: BlockNet
    classes: list[str]
    preprocessing: Preprocessing
    name: str = ""
    meta: dict = field(default_factory=dict)
    # a multi-label classifier's per-label decision thresholds on sigmoid scores (None: single-label, softmax)
    thresholds: list[float] | None = None
    tta: bool = False  # test-time augmentation: each image and its mirror, averaged (inference/tta.py)
    _onnx: tuple = field(default=(None, None), init=False, repr=False, compare=False)  # (key, engine)
    _int8: tuple = field(default=(None, None), init=False, repr=False, compare=False)  # (key, engine)
    # the engine the last predict() ran on: "torch", "onnxruntime" or "onnxruntime-int8"
    last_backend: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(self.classes) != self.model.num_classes:
            raise TransferlabError(
                f"{len(self.classes)} labels for a model with {self.model.num_classes} outputs; "
                "give a labels file with one class name per output, in order"
            )

    @classmethod
    def pretrained(cls, name: str, weights="default") -> "Classifier":
        """A registry model with its pretrained head and the weights' own class names."""
        net = create_model(str(name), weights=weights)
        labels = get_spec(str(name)).weights.labels()
        if len(labels) != net.num_classes:
            labels = tuple(str(i) for i in range(net.num_classes))
        return cls(net, list(labels), net.preprocessing, name=str(name))

    def with_labels(self, path) -> "Classifier":
        """The same model with class names read from a labels file."""
        return Classifier(self.model, read_labels(path), self.preprocessing, self.name, self.meta, self.thresholds,
                          self.tta)

    def with_tta(self, forward):
        """The engine's forward as every verb runs it: averaged with the mirrored batch when `tta` is on."""
        return mirrored(forward) if self.tta else forward

    @property
    def multilabel(self) -> bool:
        """Several labels per image: sigmoid scores, each label kept at or above its threshold."""
        return self.thresholds is not None

    @property
    def kind(self) -> str:
        """The run kind this model is ("classifier")."""
        return "classifier"

    @property
    def transform(self):
        """The evaluation transform (PIL image -> normalised tensor), equal to preprocessing.eval_transform()."""
        return EvalTransform(self.preprocessing)

    @torch.inference_mode()
    def predict(
        self,
        images,
        top: int = 5,
        batch_size: int = 32,
        num_workers: int | None = None,
        device: str | None = None,
        progress: bool | None = None,
        backend: str = "auto",
        max_drop: float | None = None,
        threshold: float | None = None,
        explain=None,
        explain_class: str | None = None,
        explain_method: str = "gradcam",
    ) -> list[dict]:
        """Top-k labels for image files, folders or globs: one record per image, errors included.

        Records: {"path", "status" ("ok" or the reason it could not be read), "top": [{"label",
        "index", "prob"}]}; a multi-label classifier's "prob" is each label's sigmoid score, and its
        records also hold "labels": [{"label", "index", "score"}], every label at or above its
        threshold (the run's tuned ones, or `threshold` for all). num_workers: decoding threads, which
        run ahead of the engine (default: one per core, none for one image); the engine runs on
        torch.get_num_threads() threads. backend: "auto" (ONNX Runtime on CPU when installed and worth
        it, else PyTorch: deploy.runtime.resolve_backend),
        "torch", "onnxruntime" or "onnxruntime-int8" (the run's int8 export); max_drop: with "auto",
        use the int8 export when the accuracy drop it recorded is at most this many points (the rule:
        deploy.runtime.choose_engine).
        explain: a folder for class-activation heatmaps (inference/explain.py): each readable record gains
        "heatmap", the path of an overlay PNG for its top class (or `explain_class`; each of a multi-label
        record's labels, also listed in "heatmaps"); explain_method: gradcam, gradcam++ or eigencam.
        """
        if explain is not None:
            return self._explained(images, explain, explain_class, explain_method, top=top, batch_size=batch_size,
                                   num_workers=num_workers, device=device, progress=progress, backend=backend,
                                   max_drop=max_drop, threshold=threshold)
        paths = find_images(images)
        dev = pick_device(device)
        workers = decode_threads(len(paths)) if num_workers is None else num_workers
        threads = torch.get_num_threads()
        # the weights' hash (~12 ms) names the ONNX engine and its cached export: only for a job either could run
        onnx_key = self._onnx_key(threads) if self._onnx[0] is not None or len(paths) >= ONNX_CACHED_MIN_IMAGES \
            else None
        self.last_backend, int8 = choose_engine(
            backend, dev, len(paths), lambda required: self.int8_forward(threads, required, max_drop), max_drop,
            engine_ready=onnx_key is not None and onnx_key == self._onnx[0],
            export_cached=onnx_key is not None and self._onnx_cache(onnx_key).is_file())
        if int8 is not None:
            return self._predict(paths, dev, top, batch_size, workers, progress, int8, threshold)
        if self.last_backend == "onnxruntime":
            return self._predict(paths, dev, top, batch_size, workers, progress, self.onnx_forward(threads, onnx_key),
                                 threshold)
        model = self._ready_on(dev)
        with channels_last_on_cpu(model, dev):
            return self._predict(paths, dev, top, batch_size, workers, progress,
                                 lambda batch: forward_in_passes(model, batch.to(dev, non_blocking=True), dev),
                                 threshold)

    def _explained(self, images, folder, class_name, method, **options) -> list[dict]:
        """predict, then the heatmaps of every readable record (checked first: library, method, class name)."""
        from .explain import cam_library, check_method, class_index, explain_records

        cam_library()
        check_method(method)
        if class_name is not None:
            class_index(self.classes, class_name)
        records = self.predict(images, **options)
        with torch.inference_mode(False):
            return explain_records(self, records, folder, class_name, method, batch_size=options["batch_size"])

    def onnx_forward(self, threads: int, key: tuple | None = None) -> OnnxRuntimeForward:
        """The ONNX Runtime engine for the current weights, rebuilt only when they (or `threads`) change;
        their export is cached on disk (deploy.runtime.onnx_cache_path) for the next process. key: the
        weights' _onnx_key when the caller has just computed it."""
        key = key or self._onnx_key(threads)
        if self._onnx[0] != key:
            self._onnx = (key, OnnxRuntimeForward(self.model, self.preprocessing.input_size, threads,
                                                  self._onnx_cache(key)))
        return self._onnx[1]

    def _onnx_cache(self, key: tuple) -> Path:
        return onnx_cache_path(key[0], self.preprocessing.input_size)

    def _ready_on(self, dev: torch.device) -> BlockNet:
        """The model on `dev` in eval mode; both walk every module, so only when needed (~4 ms a call)."""
        model = self.model
        if next(model.parameters()).device != dev:
            model = model.to(dev)
        return model.eval() if model.training else model

    def int8_forward(self, threads: int, required: bool = True, max_drop: float | None = None):
        """The engine of this run's int8 export (RUN/quantization.json), checked to come from these
        weights; None when not `required` and there is none, it is stale, or its recorded drop
        (accuracy points, mAP points for a multi-label classifier) exceeds `max_drop`."""
        folder = Path(self.name)
        report = read_quantization_report(folder) if self.name and folder.is_dir() else None
        command = f"transferlab export {self.name or 'RUN'} --format onnx --quantize int8"
        if report is None or not (folder / report["model"]).is_file():
            if required:
                raise TransferlabError(f"--backend onnxruntime-int8 needs the run's int8 export; make it with `{command}`")
            return None
        if report.get("weights_sha256") != weights_fingerprint(self.model):
            if required:
                raise TransferlabError(f"{folder / report['model']} was exported from other weights than the run's; "
                                       f"export it again: `{command}`")
            return None
        drop = report.get("accuracy_drop_points", report.get("drop_points", float("inf")))
        if max_drop is not None and not required and drop > max_drop:
            return None
        path = folder / report["model"]
        key = (str(path), path.stat().st_mtime_ns, threads)
        if self._int8[0] != key:
            self._int8 = (key, QuantizedForward(path, threads))
        return self._int8[1]

    def _onnx_key(self, threads: int) -> tuple:
        return weights_fingerprint(self.model), threads

    def _predict(self, paths, dev, top, batch_size, workers, progress, forward, threshold=None) -> list[dict]:
        """Decoding threads run ahead of the engine (a pipeline: the next batches decode while this one
        runs); each batch is stacked and scored in the caller's thread. On CPU a batch is one engine
        pass: the engine starts after 8 images, not 32, and a 30-image job overlaps too."""
        forward = self.with_tta(forward)
        step = min(batch_size, CPU_PASS_IMAGES) if dev.type == "cpu" else batch_size
        images = map_in_threads(self._decoded(), paths, workers, ahead=2 * batch_size)
        show = progress if progress is not None else len(paths) > PROGRESS_MIN_IMAGES
        records: list[dict | None] = [None] * len(paths)
        with tqdm(total=len(paths), desc="predict", unit="img", disable=not show, leave=False) as bar:
            for start in range(0, len(paths), step):
                chunk = list(islice(images, step))
                good = [start + j for j, (_, reason) in enumerate(chunk) if not reason]
                for j, (_, reason) in enumerate(chunk):
                    if reason:
                        records[start + j] = {"path": str(paths[start + j]), "status": reason, "top": []}
                if good:
                    batch = torch.stack([chunk[i - start][0] for i in good])
                    batch = batch.pin_memory() if dev.type == "cuda" else batch
                    for i, scored in zip(good, self.score_records(forward(batch), top, threshold)):
                        records[i] = {"path": str(paths[i]), "status": "ok", **scored}
                bar.update(len(chunk))
        return records

    def _decoded(self):
        """path -> (normalised image tensor, "") or (None, the reason it could not be read)."""
        transform, min_size = self.transform, self.preprocessing.resize

        def decode(path):
            try:
                return transform(open_image(path, min_size=min_size)), ""
            except ImageReadError as e:
                return None, e.reason
        return decode

    def score_records(self, logits: torch.Tensor, top: int = 5, threshold: float | None = None) -> list[dict]:
        """What a record holds for each row of logits: {"top": [...]} (softmax, or a multi-label
        classifier's sigmoid scores) and, multi-label, "labels": every label at or above its threshold
        (`threshold` for all when given). `predict` and the server build their records with it."""
        logits = logits.float()
        probs = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)
        values, idx = probs.topk(max(1, min(top, len(self.classes))), dim=1)
        out = []
        for row in range(len(probs)):
            scored = {"top": self._top(values[row], idx[row])}
            if self.multilabel:
                scored["labels"] = self._labels(probs[row], threshold)
            out.append(scored)
        return out

    def _top(self, values, indices) -> list[dict]:
        return [
            {"label": self.classes[j], "index": int(j), "prob": float(p)}
            for p, j in zip(values.tolist(), indices.tolist())
        ]

    def _labels(self, scores: torch.Tensor, threshold: float | None) -> list[dict]:
        """The labels a multi-label record carries, highest score first."""
        cut = torch.full_like(scores, threshold) if threshold is not None else torch.tensor(self.thresholds)
        keep = torch.nonzero(scores >= cut).flatten().tolist()
        return sorted(({"label": self.classes[j], "index": j, "score": float(scores[j])} for j in keep),
                      key=lambda r: -r["score"])

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw outputs for a preprocessed batch."""
        with torch.inference_mode():
            return self.model.eval()(batch)


def decode_threads(num_images: int) -> int:
    """Decoding threads beside the engine: one per core (a large PNG decodes slower than the engine
    runs), none for a single image."""
    return 0 if num_images <= 1 else min(8, available_cpus())


def read_labels(path) -> list[str]:
    """One class name per line (blank lines ignored), or a JSON list."""
    path = Path(path)
    if not path.is_file():
        raise TransferlabError(f"labels file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("["):
        try:
            return [str(x) for x in json.loads(text)]
        except json.JSONDecodeError as e:
            raise TransferlabError(f"{path}: invalid JSON labels ({e})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
