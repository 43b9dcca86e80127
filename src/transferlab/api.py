"""The one-call functions, for every kind of model: a registry name or a run folder of either kind
(classifier, detector) works wherever a model is asked for. The CLI is a thin layer over these."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import fields
from pathlib import Path

from .core.errors import TransferlabError
from .runs.folder import is_run_folder, read_config, read_meta

EXPLAIN_DETECTOR = ("--explain applies to classifiers: a face detector has no class-activation map "
                    "(its boxes are the explanation; see --draw)")


def model_kind(model) -> str:
    """"classifier" or "detector", for a loaded model, a run folder or a registry name."""
    if hasattr(model, "kind"):
        return model.kind
    if is_run_folder(model) or Path(str(model)).is_dir():
        return read_meta(model)["kind"]  # a folder that is no run gets a clear error here
    from .detect.model import CONFIGS

    return "detector" if str(model) in CONFIGS else "classifier"


def load(model: str = "efficientnet_lite0", weights="default", labels=None, tta: bool | None = None):
    """A Classifier or a Detector from a registry name or a run folder of either kind.

    labels: a file of class names (one per line, or a JSON list) for a classifier's outputs.
    tta: a classifier's test-time augmentation on or off (default: as its run was trained, else off).
    """
    kind = model_kind(model)
    if kind == "detector":
        if labels is not None:
            raise TransferlabError("--labels applies to classifiers; a face detector has no class names")
        if tta:
            raise TransferlabError("--tta applies to classifiers; a face detector has no test-time augmentation")
        from .detect.detector import load_detector

        return load_detector(model)
    if is_run_folder(model):
        from .runs.classification import load_run

        clf = load_run(model)
    else:
        from .inference.classifier import Classifier

        clf = Classifier.pretrained(str(model), weights=weights)
    if tta is not None:
        clf.tta = bool(tta)
    return clf.with_labels(labels) if labels is not None else clf


def predict(images, model="efficientnet_lite0", top: int = 5, labels=None, weights="default",
            threshold: float | None = None, tta: bool | None = None, **options) -> list[dict]:
    """Label (classifier) or find faces in (detector) files, folders or globs: one record per image,
    {"path", "status", "top" | "detections"}; a multi-label classifier's records also hold "labels".
    threshold: a detector's score threshold, or one decision threshold for every label of a
    multi-label classifier (default: the run's tuned ones). explain=DIR (classifiers): a class-activation
    heatmap per image, its path in the record's "heatmap" (explain_class, explain_method: see
    Classifier.predict). tta: test-time augmentation on or off (default: the run's). See Classifier.predict
    and Detector.predict."""
    net = model if hasattr(model, "kind") else load(model, weights=weights, labels=labels, tta=tta)
    if net.kind == "detector":
        if options.get("explain") is not None:
            raise TransferlabError(EXPLAIN_DETECTOR)
        return net.predict(images, threshold, batch_size=options.get("batch_size", 32),
                           progress=options.get("progress"))
    return net.predict(images, top=top, threshold=threshold, **options)


def evaluate(model, data, device=None, progress: bool = True, format: str = "auto", plot=None,
             threshold: float | None = None, tta: bool | None = None) -> dict:
    """Evaluate on labelled data. A classifier: accuracy, per-class report, confusion matrix on a class
    folder or a table; a multi-label one: mAP, micro/macro F1, per-label AP/precision/recall at its
    thresholds (or `threshold` for every label). A detector: AP@0.5 on annotated faces (format: one of
    core.options.ANNOTATION_FORMATS), next to the pretrained architecture's, with its precision/recall
    curve at `plot` (default: in the run). tta: a classifier's test-time augmentation on or off (default:
    the run's)."""
    net = model if hasattr(model, "kind") else load(model, tta=tta)
    if net.kind == "detector":
        from .detect.evaluate import evaluate_faces

        return evaluate_faces(net, data, format, plot=plot)
    from .inference.evaluation import evaluate_folder

    return evaluate_folder(net, data, device=device, progress=progress, threshold=threshold)


def export(model, format: str = "onnx", out=None, **options):
    """Export a model (run folder, registry name or loaded model) to ONNX or TorchScript, checked
    against PyTorch; returns an ExportResult (path, sidecar, format, max_abs_diff, quantization).

    quantize="int8" or "fp16" (ONNX): calibrated on the run's training images, measured on its
    validation split (accuracy, or AP@0.5 for a detector) and refused above max_drop points
    (default 1); options max_drop, calibration (images), calibration_method, data (another dataset).
    """
    net = model if hasattr(model, "kind") else load(model)
    if net.kind == "detector":
        from .detect.export import export_onnx

        return export_onnx(net, out, format=format, **options)
    from .inference.export import export_classifier

    return export_classifier(net, format, out, **options)


def train(data, model: str | None = None, strategy: str | None = None, out=None, resume: bool = False,
          progress: bool = True, callbacks=(), **options):
    """Train a model on labelled images and save the run; returns a Run (path, metrics, history, predictor).

    The model chooses the task: a classifier (default efficientnet_lite0, strategy two-stage) on an image
    folder, or a face detector (blazeface_front, blazeface_back; strategy finetune) on annotated faces
    (options data_format, val_data). Options are TrainConfig's fields. strategy="auto" measures the data
    and trains adaptively (the head, then fine-tuning only while it beats the head); budget="10m" (or
    seconds) limits the wall clock of the whole run, and with strategy="auto" and no model picks the
    installed backbone with the best LogME; freeze="auto" searches the freeze point of a partial fine-tune."""
    from .core.distributed import shutdown
    from .data.tables import as_table
    from .tasks import create_task, task_class
    from .training.budget import Budget, parse_duration
    from .training.config import TrainConfig
    from .training.trainer import Trainer

    unknown = set(options) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TypeError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    if options.get("budget") is not None:
        options["budget"] = parse_duration(options["budget"])
    budget = Budget(options["budget"]) if options.get("budget") else None  # the clock starts now
    cache = scan = None
    if resume:
        saved = read_config(out)
        saved.update(options)
        cfg = TrainConfig.from_dict(saved)
        budget = Budget(cfg.budget) if cfg.budget else None
        kind = model_kind(cfg.model)
        data = as_table(data, cfg) if kind == "classifier" else data  # a table, read as it was first time
    else:
        kind = model_kind(model) if model else "classifier"
        options = {k: v for k, v in options.items() if v is not None}  # None: the default, or the preset's
        explicit = {k: v for k, v in (("model", model), ("strategy", strategy)) if v is not None}
        cfg = TrainConfig(**{**task_class(kind).defaults, **options, **explicit})
        if kind == "classifier":
            from .data.folders import scan_dataset

            data = as_table(data, cfg)  # a table, with its columns and --val
            scan = scan_dataset(data, cfg.val_split, cfg.seed, exclude=cfg.exclude, multilabel=True)
        preset = quality_preset(kind, cfg.quality, {**options, **explicit}, cfg, scan, budget)
        cfg = TrainConfig(**{**task_class(kind).defaults, **preset, **options, **explicit})
        if kind == "classifier" and cfg.strategy == "auto":
            from .advice.plan import advise_for_training
            from .models import installed_models
            from .training.batches import TrainingCache

            candidates = installed_models() if model is None and budget is not None else None
            cache = TrainingCache()  # the measuring pass's features: the head's feature cache reuses them
            cfg = advise_for_training(data, cfg, progress=progress, budget=budget, models=candidates,
                                      reuse=cache.clean)
        if kind == "classifier" and cfg.strategy == "partial" and cfg.freeze == "auto":
            from .advice.sweep import freeze_search

            return freeze_search(data, dataclasses.replace(cfg), out=out, progress=progress, budget=budget)
    trainer = Trainer(create_task(kind, data, cfg, cache, scan), data, cfg, out=out, resume=resume, progress=progress,
                      callbacks=callbacks, budget=budget)
    try:
        return trainer.fit()
    finally:
        shutdown(trainer.dist)


def quality_preset(kind: str, quality: str, given: dict, cfg, scan=None, budget=None) -> dict:
    """The fields a --quality preset sets (those not `given`), with quality_reasons: why each. A
    classifier's `scan` (its dataset, read) lets the images' pixels set the input size; under a `budget`,
    `best` picks the schedule that fits (training.presets.best_under_budget) from forward passes timed here."""
    from .data.images import median_short_side
    from .models import installed_models
    from .training.budget import MARGIN, forward_seconds_per_image, two_stage_seconds
    from .training.presets import best_under_budget, quality_settings

    if kind != "classifier":
        if quality != "default":
            raise TransferlabError(f"--quality is for classifiers; train a {kind} with its own options (drop --quality)")
        return {}
    short_side = median_short_side(s.path for s in scan.splits["train"]) if "image_size" not in given else None
    if quality == "best" and budget is not None:
        train_images, val_images = len(scan.splits["train"]), len(scan.splits["val"])
        views = cfg.cache_views if cfg.augment != "none" else 1

        timed = functools.cache(forward_seconds_per_image)

        def price(backbone: str, size: int, epochs: int) -> float:
            return two_stage_seconds(timed(backbone, size, cfg.device), epochs, train_images, val_images, views)

        settings, reasons = best_under_budget(installed_models(), given, short_side, (1 - MARGIN) * budget.left(),
                                              price)
    else:
        settings, reasons = quality_settings(quality, installed_models(), set(given), cfg.model, short_side)
    return {**settings, "quality_reasons": reasons} if reasons else {}


def audit(data, model: str = "efficientnet_lite0", out=None, progress: bool = True, **options):
    """Audit an image folder before training: exact and near duplicates (within and across splits),
    likely label errors (cleanlab), outliers, imbalance, tiny and unreadable images; returns an
    AuditResult, and writes audit.html/csv/json into `out` when given. The data is never modified.
    Options: see transferlab.auditing.audit.audit (cache_dir, threshold, val_split, seed, ...)."""
    from .auditing.audit import audit as run_audit
    from .auditing.near_duplicates import NEAR_DUPLICATE_COSINE

    if options.get("threshold") is None:
        options["threshold"] = NEAR_DUPLICATE_COSINE
    return run_audit(data, model=model, out=out, progress=progress, **options)


def runs(folder="runs", sort: str = "created", kind: str | None = None, model: str | None = None) -> list[dict]:
    """Every run under `folder` (classifier and detector, finished or interrupted; a folder beside them
    that is no run gets a row saying so): one dict per folder with name, status, kind, model, strategy,
    data, metric (val_acc, val_map for multi-label, val_ap50 for detectors), best, best_epoch, epochs,
    wall_s (the seconds of its epochs), created, path. sort: one of core.options.RUN_SORT_KEYS (metric:
    best first); kind, model: keep only those runs."""
    from .runs.table import list_runs

    return list_runs(folder, sort=sort, kind=kind, model=model)


def compare_runs(*runs) -> dict:
    """Finished runs side by side: {"runs": names, "paths", "metrics": {name: [value per run]},
    "config": {option: [value per run]} for the options that differ, "best": index of the best run}."""
    from .runs.table import compare_runs as compare

    if len(runs) == 1 and isinstance(runs[0], (list, tuple)):
        runs = tuple(runs[0])
    return compare(runs)
