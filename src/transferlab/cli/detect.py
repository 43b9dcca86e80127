"""`transferlab detect ...`: the face-detection commands, in the same grammar as the classifier's
(predict, evaluate and export are the shared commands with a detector as the default model)."""
from __future__ import annotations

import argparse

from ..core.options import DEFAULT_DETECTOR


def register(subparsers) -> argparse.ArgumentParser:
    """Add `detect` and its sub-commands to the main parser."""
    from .commands import add_evaluate, add_export, add_predict, add_train

    detect = subparsers.add_parser("detect", help="face detection with BlazeFace: predict, train, evaluate, export")
    sub = detect.add_subparsers(dest="detect_command", metavar="COMMAND", required=True)
    add_predict(sub, default_model=DEFAULT_DETECTOR, help="find faces in images, folders or globs")
    # the one train command, with a detector as the default model
    add_train(sub, default_model=DEFAULT_DETECTOR, help="fine-tune BlazeFace on annotated faces")
    add_evaluate(sub)
    add_export(sub)
    return detect
