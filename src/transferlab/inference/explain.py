"""Why did it say that: class-activation maps (Grad-CAM, Grad-CAM++, EigenCAM) of a classifier, from
pytorch-grad-cam (PyPI `grad-cam`, the `explain` extra), drawn over the image the model saw.

The target layer is the model's last spatial block before pooling (BlockNet's blocks: layer4 of a
ResNet, conv_head of an EfficientNet, ...), so every registered architecture works; a ViT (timm, one
body block) is explained at its last transformer block's input, its patch tokens reshaped to the grid.

Only the network's tail needs gradients: the target layer's output is cut from the graph and made a
leaf, so a map costs one forward pass and a backward pass over the head alone (about a forward's cost,
not three: bench/explain.py measures it).
"""
from __future__ import annotations

import math
import re
import weakref
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import ImageReadError, TransferlabError
from ..core.io import atomic_path
from ..core.options import EXPLAIN_METHODS
from ..data.images import open_image

INSTALL = "pip install 'transferlab[explain]' (or: pip install grad-cam)"
HEATMAP_DIR = "heatmaps"  # a run's heatmaps of its most confidently wrong images
_TARGETS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def cam_library():
    """pytorch_grad_cam, or a one-line TransferlabError saying what to install."""
    try:
        import pytorch_grad_cam
    except ImportError:
        raise TransferlabError(f"class-activation heatmaps need pytorch-grad-cam: {INSTALL}") from None
    return pytorch_grad_cam


def explain_available() -> bool:
    """Whether pytorch-grad-cam is installed (heatmaps can be made)."""
    try:
        cam_library()
    except TransferlabError:
        return False
    return True


def check_method(method: str) -> str:
    """The method, or a one-line error listing the methods."""
    if method not in EXPLAIN_METHODS:
        raise TransferlabError(f"unknown explain method {method!r}; choose one of: {', '.join(EXPLAIN_METHODS)}")
    return method


def class_index(classes: list[str], name: str) -> int:
    """The index of class `name`, or a one-line error naming the model's classes."""
    if name in classes:
        return classes.index(name)
    shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
    raise TransferlabError(f"--explain-class {name!r} is not a class of this model; its classes are: {shown}")


# --- the target layer --------------------------------------------------------------------------
def cam_target(model) -> tuple[nn.Module, object]:
    """(target layer, reshape_transform or None) of a BlockNet: the last block with a spatial (N, C, H, W)
    output before pooling; for a one-block body (timm ViTs and the like) the last transformer block's
    first norm, whose tokens are reshaped to the patch grid, or else the body's last spatial layer.
    Found by one probe forward at the model's input size, then remembered for the model."""
    if model in _TARGETS:
        return _TARGETS[model]
    size = model.preprocessing.input_size
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    last = None
    with torch.no_grad():
        for module in model.blocks.values():
            x = module(x)
            if x.dim() == 4 and x.shape[-1] * x.shape[-2] > 1:
                last = module
    found = (last, None) if last is not None else _inner_target(model)
    model.train(was_training)
    _TARGETS[model] = found
    return found


def _inner_target(model) -> tuple[nn.Module, object]:
    body = model.blocks[model.block_names[0]]
    inner = getattr(body, "model", body)
    blocks = getattr(inner, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks):  # a ViT: tokens (N, prefix + H*W, C)
        last = blocks[-1]
        return getattr(last, "norm1", last), TokenGrid(getattr(inner, "num_prefix_tokens", 1))
    # any other body: its last layer with a spatial output, by a probe with hooks
    outputs: list[tuple[nn.Module, torch.Size]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append((m, o.shape)) if torch.is_tensor(o) else None)
             for m in body.modules() if m is not body]
    size = model.preprocessing.input_size
    try:
        with torch.no_grad():
            body(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    spatial = [m for m, shape in outputs if len(shape) == 4 and shape[-1] * shape[-2] > 1]
    if not spatial:
        raise TransferlabError(f"{getattr(model, 'arch', type(inner).__name__)} has no spatial layer to explain")
    return spatial[-1], None


class TokenGrid:
    """pytorch-grad-cam's reshape_transform for ViTs: (N, prefix + H*W, C) tokens -> (N, C, H, W)."""

    def __init__(self, prefix: int):
        self.prefix = prefix

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop the class (and register) tokens, lay the patch tokens out on their square grid."""
        patches = tokens[:, self.prefix:, :]
        side = math.isqrt(patches.shape[1])
        return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)


@contextmanager
def _tail_only(model: nn.Module, layer: nn.Module):
    """Gradients for the network's tail only: parameters frozen, the target layer's output cut from
    what came before and made a leaf that requires grad (registered before pytorch-grad-cam's own
    hooks, which then record this leaf's activations and gradients)."""
    _no_inference_tensors(model)
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    handle = layer.register_forward_hook(lambda m, i, out: out.detach().requires_grad_(True))
    try:
        yield
    finally:
        handle.remove()
        for p, flag in saved:
            p.requires_grad_(flag)


def _no_inference_tensors(model: nn.Module) -> None:
    """Parameters and buffers made in inference mode (Classifier.predict lays the weights out
    channels-last inside torch.inference_mode) copied to normal tensors, which autograd can save."""
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.is_inference():
                p.data = p.data.clone()
        for name, b in module.named_buffers(recurse=False):
            if b is not None and b.is_inference():
                module._buffers[name] = b.clone()


# --- maps and overlays -------------------------------------------------------------------------
def _cam_class(method: str):
    lib = cam_library()
    return dict(zip(EXPLAIN_METHODS, (lib.GradCAM, lib.GradCAMPlusPlus, lib.EigenCAM)))[check_method(method)]


def cam_maps(model, batch: torch.Tensor, classes: list[int], method: str = "gradcam") -> np.ndarray:
    """Class-activation maps (N, H, W) in [0, 1] at the input's resolution, one per image for the class
    given for it (EigenCAM's first principal component does not depend on the class)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = _cam_class(method)
    layer, reshape = cam_target(model)
    device = next(model.parameters()).device
    with torch.inference_mode(False), torch.enable_grad(), _tail_only(model, layer):
        x = batch.detach().clone().to(device)  # a normal tensor, also when the batch was made in inference mode
        with cam_class(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    return np.nan_to_num(np.asarray(maps, dtype=np.float32))


def overlay(crop: np.ndarray, cam: np.ndarray):
    """The map over the model's view of the image (uint8 H x W x 3), as pytorch-grad-cam draws it (jet
    colours, half opacity): a PIL image."""
    from PIL import Image
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if cam.shape != crop.shape[:2]:
        import cv2

        cam = cv2.resize(cam, (crop.shape[1], crop.shape[0]))
    return Image.fromarray(show_cam_on_image(crop.astype(np.float32) / 255.0, cam, use_rgb=True, image_weight=0.5))


def explain_crops(clf, crops: list[np.ndarray], classes: list[int], method: str = "gradcam",
                  batch_size: int = 16) -> list:
    """Overlays (PIL images) of each crop's map for its class; crops as EvalTransform.crop gives them."""
    out = []
    for start in range(0, len(crops), batch_size):
        part = crops[start:start + batch_size]
        batch = clf.transform.normalize(np.stack(part))
        maps = cam_maps(clf.model.eval(), batch, classes[start:start + batch_size], method)
        out += [overlay(c, m) for c, m in zip(part, maps)]
    return out


def model_view(clf, path) -> np.ndarray:
    """The centre crop the classifier sees of an image file (uint8 H x W x 3)."""
    return clf.transform.crop(open_image(path, min_size=clf.preprocessing.resize))


# --- predict --explain -------------------------------------------------------------------------
def explained_classes(clf, record: dict, class_name: str | None = None) -> list[int]:
    """What a record is explained for: the class named, else a multi-label record's labels (or its top
    label when it has none), else the top class."""
    if class_name is not None:
        return [class_index(clf.classes, class_name)]
    if record.get("labels"):
        return [g["index"] for g in record["labels"]]
    return [record["top"][0]["index"]]


def explain_records(clf, records: list[dict], out_dir, class_name: str | None = None, method: str = "gradcam",
                    batch_size: int = 16) -> list[dict]:
    """Write an overlay PNG per readable record (per label of a multi-label record) into out_dir; each
    record gains "heatmap" (the path of its first overlay) and a multi-label one "heatmaps":
    [{"label", "index", "path"}]."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = []  # (record, class index)
    crops = {}
    for r in records:
        if r["status"] != "ok":
            continue
        try:
            crops[id(r)] = model_view(clf, r["path"])
        except ImageReadError as e:  # changed since it was predicted
            r["status"] = e.reason
            continue
        jobs += [(r, c) for c in explained_classes(clf, r, class_name)]
    used: set[str] = set()
    for start in range(0, len(jobs), batch_size):
        part = jobs[start:start + batch_size]
        images = explain_crops(clf, [crops[id(r)] for r, _ in part], [c for _, c in part], method, batch_size)
        for (r, c), image in zip(part, images):
            target = out_dir / _unique_name(Path(r["path"]).stem, clf.classes[c], used)
            with atomic_path(target) as tmp:
                image.save(tmp, format="PNG")
            r.setdefault("heatmap", str(target))
            if clf.multilabel:
                r.setdefault("heatmaps", []).append({"label": clf.classes[c], "index": c, "path": str(target)})
    return records


def _unique_name(stem: str, label: str, used: set[str]) -> str:
    safe = re.sub(r"[^\w.-]+", "_", f"{stem}_{label}").strip("._") or "image"
    name, i = f"{safe}.png", 2
    while name in used:
        name, i = f"{safe}-{i}.png", i + 1
    used.add(name)
    return name


# --- a run's most confidently wrong images -------------------------------------------------------
def error_heatmaps(clf, run, evaluations: dict, method: str = "gradcam", most: int = 10) -> int:
    """Overlays for the `most` most confidently wrong images of each evaluation, written to RUN/heatmaps/:
    a classifier's for the true and the predicted class, a multi-label one's for the wrong label. Each
    error gains "heatmaps" ({"true", "predicted"} or {"label"}: paths relative to the run). Nothing
    when pytorch-grad-cam is not installed. Returns how many maps were made."""
    if not any(ev.get("most_confident_errors") for ev in evaluations.values()) or not explain_available():
        return 0
    run = Path(run)
    made = 0
    for split, ev in evaluations.items():
        errors = ev.get("most_confident_errors", [])[:most]
        jobs = []  # (error, role, class index, crop)
        for w in errors:
            try:
                crop = model_view(clf, w["path"])
            except ImageReadError:
                continue
            roles = {"label": w["label"]} if "label" in w else {"true": w["true"], "predicted": w["predicted"]}
            jobs += [(w, role, clf.classes.index(name), crop) for role, name in roles.items() if name in clf.classes]
        if not jobs:
            continue
        images = explain_crops(clf, [j[3] for j in jobs], [j[2] for j in jobs], method)
        safe_split = re.sub(r"[^\w-]+", "_", split)
        for (w, role, _, _), image in zip(jobs, images):
            rel = f"{HEATMAP_DIR}/{safe_split}-{errors.index(w)}-{role}.png"
            with atomic_path(run / rel) as tmp:
                image.save(tmp, format="PNG")
            w.setdefault("heatmaps", {})[role] = rel
            made += 1
    return made
