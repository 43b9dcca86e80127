"""What differs per kind of model on the one training engine: a Task per run kind (core.options.RUN_KINDS),
chosen by the model. A new task is a module here and an entry in TASKS."""
from __future__ import annotations

import importlib

from .base import PhaseData, Run, Task

# run kind -> "module:class"; imported when used, so reading the registry costs nothing
TASKS = {"classifier": "classification:ClassificationTask", "detector": "detection:DetectionTask"}


def task_class(kind: str) -> type[Task]:
    """The Task class that trains models of a run kind."""
    module, cls = TASKS[kind].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def create_task(kind: str, data, cfg, cache=None, scan=None) -> Task:
    """The task for a run of `kind` on `data`: a classifier's data is read here (unless the caller's `scan`
    holds it read with cfg's split), since its labels decide between one label per image and several
    (MultiLabelTask); `cache`: a classifier's TrainingCache (what the advisor already computed)."""
    if kind != "classifier":
        return task_class(kind)()
    from ..data.folders import scan_dataset
    from .classification import ClassificationTask
    from .multilabel import MultiLabelTask

    if scan is None:
        scan = scan_dataset(data, cfg.val_split, cfg.seed, exclude=cfg.exclude, multilabel=True)
    return (MultiLabelTask if scan.multilabel else ClassificationTask)(cache=cache, scan=scan)


__all__ = ["PhaseData", "Run", "Task", "TASKS", "create_task", "task_class"]
