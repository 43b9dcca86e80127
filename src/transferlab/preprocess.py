"""A model's own preprocessing, and the transforms built from it for inference and training."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AUGMENT_LEVELS = ("none", "light", "strong")


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a model; stored in model.json so a run predicts the way it trained."""

    input_size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
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

    @property
    def interpolation_mode(self) -> T.InterpolationMode:
        return T.InterpolationMode(self.interpolation)

    def normalize(self) -> T.Compose:
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

    def train_transform(self, augment: str = "light") -> T.Compose:
        if augment not in AUGMENT_LEVELS:
            raise ValueError(f"augment must be one of {AUGMENT_LEVELS}, got {augment!r}")
        if augment == "none":
            return self.eval_transform()
        size, mode = self.input_size, self.interpolation_mode
        if augment == "light":
            ops = [T.RandomResizedCrop(size, scale=(0.35, 1.0), interpolation=mode, antialias=True), T.RandomHorizontalFlip()]
        else:
            ops = [
                T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=mode, antialias=True),
                T.RandomHorizontalFlip(),
                T.TrivialAugmentWide(interpolation=mode),
                T.ColorJitter(0.2, 0.2, 0.2),
            ]
        ops.append(self.normalize())
        if augment == "strong":
            ops.append(T.RandomErasing(p=0.25))
        return T.Compose(ops)
