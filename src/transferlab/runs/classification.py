"""A classifier's run folder: writing it at the end of training, loading it back as a Classifier."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..core.io import load_state_dict_file, save_weights
from ..data.transforms import Preprocessing
from ..inference.classifier import Classifier
from ..inference.evaluation import evaluate_classifier, evaluate_multilabel
from ..inference.explain import error_heatmaps
from ..models import BlockNet, create_model
from ..models.weights import load_user_weights
from .folder import read_meta, write_meta
from .html import write_html_report
from .report import write_report
from .view import write_evaluations


def write_run(out: Path, model: BlockNet, scan, cfg, phases, metrics: dict, history: list[dict],
              extra: dict | None = None, thresholds: list[float] | None = None) -> Classifier:
    """Write weights + model.json, evaluate the validation (and test) split, plot and report (report.md,
    report.html). thresholds: a multi-label classifier's per-label decision thresholds."""
    out = Path(out)
    save_weights(model.state_dict(), out / "model.safetensors")
    meta = {
        "architecture": cfg.model,
        "num_classes": len(scan.classes),
        "classes": scan.classes,
        "preprocessing": model.preprocessing.to_dict(),
        "strategy": cfg.strategy,
        "phases": [p.to_dict() for p in phases],
        "freeze": phases[-1].freeze,
        "frozen_blocks": model.group_names[: phases[-1].freeze],
        "blocks": model.group_names,
        "bn_policy": model.bn_policy,
        "config": asdict(cfg),
        "dataset": scan.to_dict(),
        "metrics": metrics,
        **(extra or {}),
    }
    if getattr(cfg, "advice", None):
        meta["advice"] = cfg.advice
    if thresholds is not None:
        meta["thresholds"] = thresholds
    meta["tta"] = cfg.tta  # the run's evaluations below, and every later predict, average with the mirror
    clf = Classifier(model, list(scan.classes), model.preprocessing, name=str(out), meta=meta, thresholds=thresholds,
                     tta=cfg.tta)
    evaluations = {}
    for split in ("val", "test"):
        if scan.splits.get(split):
            if clf.multilabel:
                evaluations[split] = evaluate_multilabel(clf, scan.splits[split], device=cfg.device, progress=False,
                                                         keep_predictions=True)
                metrics[f"{split}_map_final"] = evaluations[split]["map"]
            else:
                evaluations[split] = evaluate_classifier(clf, scan.splits[split], device=cfg.device, progress=False,
                                                         keep_predictions=True)
                metrics[f"{split}_acc_final"] = evaluations[split]["accuracy"]
    error_heatmaps(clf, out, evaluations)  # the most confidently wrong images' heatmaps, for report.html
    clf.meta = write_meta(out, "classifier", meta)
    write_report(out, clf.meta, history, evaluations)
    write_evaluations(out, evaluations)
    write_html_report(out)
    return clf


def load_run(run) -> Classifier:
    """A trained run as a Classifier; weights load from safetensors, never from a pickle."""
    run = Path(run)
    meta = read_meta(run, kind="classifier")
    model = create_model(meta["architecture"], num_classes=meta["num_classes"], weights="none")
    model.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    load_user_weights(model, load_state_dict_file(run / "model.safetensors"), str(run / "model.safetensors"))
    model.eval()
    return Classifier(model, list(meta["classes"]), model.preprocessing, name=str(run), meta=meta,
                      thresholds=meta.get("thresholds"), tta=meta.get("tta", False))
