"""A model's own preprocessing, and the transforms built from it for inference and training."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from ..core.options import AUGMENT_LEVELS, AUGMENT_POLICIES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CROP_SCALES = {"light": (0.35, 1.0), "strong": (0.08, 1.0)}  # RandomResizedCrop's share of the image area


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a model; stored in model.json so a run predicts the way it trained."""

    input_size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        """Plain data for model.json and export sidecars."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(
            input_size=int(d["input_size"]),
            resize=int(d["resize"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=d.get("interpolation", "bilinear"),
        )

    def resized(self, input_size: int) -> "Preprocessing":
        """The same preprocessing at another input size, keeping the resize/crop ratio."""
        resize = int(round(input_size * self.resize / self.input_size))
        return Preprocessing(input_size, resize, self.mean, self.std, self.interpolation)

    def decode_side(self, augment: str) -> int:
        """The shorter side an image needs for this transform to see the pixels it would see in the file.

        Evaluation resizes to `resize`. A random crop of the smallest area share s is then scaled to
        `input_size`, so below input_size / sqrt(s) it would be upsampled from fewer pixels than the
        original gives: blurrier training images than the validation ones. Capped at twice `resize`
        (strong augmentation's smallest crops are upsampled from most photos anyway).
        """
        if augment == "none":
            return self.resize
        need = math.ceil(self.input_size / math.sqrt(CROP_SCALES[augment][0]))
        return max(self.resize, min(need, 2 * self.resize))

    @property
    def interpolation_mode(self) -> T.InterpolationMode:
        """The torchvision InterpolationMode of `interpolation`."""
        return T.InterpolationMode(self.interpolation)

    def normalize(self) -> T.Compose:
        """Tensor conversion and mean/std normalisation."""
        return T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(self.mean, self.std)])

    def eval_transform(self) -> T.Compose:
        """Resize the shorter side, centre-crop: the evaluation protocol of the pretrained weights."""
        return T.Compose(
            [
                T.Resize(self.resize, interpolation=self.interpolation_mode, antialias=True),
                T.CenterCrop(self.input_size),
                self.normalize(),
            ]
        )

    def train_transform(self, augment: str = "light", policy: str = "auto") -> T.Compose:
        """Random crop and flip at an augmentation level, an automatic augmentation policy (auto: the
        level's own, TrivialAugment for strong), strong's colour jitter and erasing, then normalisation."""
        if augment not in AUGMENT_LEVELS:
            raise ValueError(f"augment must be one of {AUGMENT_LEVELS}, got {augment!r}")
        if augment == "none":
            return self.eval_transform()
        size, mode = self.input_size, self.interpolation_mode
        ops = [T.RandomResizedCrop(size, scale=CROP_SCALES[augment], interpolation=mode, antialias=True),
               T.RandomHorizontalFlip()]
        policy = ("trivialaugment" if augment == "strong" else "none") if policy == "auto" else policy
        if policy != "none":
            ops.append(augmentation_policy(policy, mode))
        if augment == "strong":
            ops.append(T.ColorJitter(0.2, 0.2, 0.2))
        ops.append(self.normalize())
        if augment == "strong":
            ops.append(T.RandomErasing(p=0.25))
        return T.Compose(ops)


def augmentation_policy(name: str, mode: T.InterpolationMode) -> T.Transform:
    """torchvision's policy by its AUGMENT_POLICIES name (RandAugment at its paper's defaults, 2 ops of
    magnitude 9; AutoAugment's ImageNet policy)."""
    if name not in AUGMENT_POLICIES or name == "auto":
        raise ValueError(f"policy must be one of {AUGMENT_POLICIES[1:]}, got {name!r}")
    return {"trivialaugment": lambda: T.TrivialAugmentWide(interpolation=mode),
            "randaugment": lambda: T.RandAugment(interpolation=mode),
            "autoaugment": lambda: T.AutoAugment(interpolation=mode)}[name]()


_PIL_FILTERS = {
    "nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS,
    "box": Image.BOX, "hamming": Image.HAMMING,
}


class EvalTransform:
    """Preprocessing.eval_transform() for PIL images, computed with less work and the same result.

    The reference resizes the whole image (shorter side to `resize`), centre-crops `input_size`, then
    converts and normalises. Here Pillow resamples only the crop window (its `box` argument keeps the
    same scale and the same source pixels under every filter tap, the full image stays available at
    the window's edges), so the largest step shrinks by about (resize/input_size) * aspect ratio.
    Inputs other than RGB PIL images use the reference transform. The two halves are public, so that
    a server crops each upload in a worker thread and normalises a whole batch in one step: crop()
    then normalize().
    """

    def __init__(self, preprocessing: Preprocessing):
        self.pre = preprocessing
        self.reference = preprocessing.eval_transform()
        self.geometry = T.Compose(self.reference.transforms[:2])  # the reference's Resize and CenterCrop
        self.filter = _PIL_FILTERS.get(preprocessing.interpolation)
        self.mean = np.asarray(preprocessing.mean, dtype=np.float32)
        self.std = np.asarray(preprocessing.std, dtype=np.float32)

    def __call__(self, img):
        if not isinstance(img, Image.Image) or img.mode != "RGB":
            return self.reference(img)
        return self.normalize(self.crop(img))

    def crop(self, img: Image.Image) -> np.ndarray:
        """The resized centre crop of an RGB image as uint8 pixels (input_size, input_size, 3)."""
        pre = self.pre
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        if self.filter is None or pre.input_size > pre.resize or short < 1 \
                or int(pre.resize * long / short) < pre.input_size:
            return np.asarray(self.geometry(img), dtype=np.uint8)
        # torchvision's Resize(int): shorter side -> resize, longer side -> int(resize * long / short)
        new_short, new_long = pre.resize, int(pre.resize * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        crop = pre.input_size
        top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))  # torchvision's CenterCrop
        if (new_w, new_h) == (w, h):
            img = img.crop((left, top, left + crop, top + crop))
        else:
            sx, sy = w / new_w, h / new_h
            box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
            img = img.resize((crop, crop), self.filter, box=box)
        return np.asarray(img, dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 crops (..., H, W, 3) -> normalised float32 (..., 3, H, W): one image, or a stacked
        batch in one step."""
        # numpy, not torch: torch splits an op this size over its thread pool, which costs tens of ms
        # when the cores are busy (server threads, other processes); numpy runs it in ~0.5 ms
        x = pixels.astype(np.float32)
        x /= 255.0
        x -= self.mean
        x /= self.std
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))
