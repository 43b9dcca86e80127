"""What fine-tuning BlazeFace needs beyond the engine: augmented, letterboxed samples with targets
normalised to the input, the training forward (backbone under autocast, heads in float32), per-tensor
relative learning rates, and the block-freezing rule. The engine runs them (tasks/detection.py)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from ..core.errors import TransferlabError
from ..core.options import LR_SCALINGS
from ..data.images import open_image_scaled
from .augment import AugmentConfig, augment, photometric
from .data import FaceDataset, Sample
from .image import letterbox, to_tensor

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose", "mouth", "right_ear_tragion", "left_ear_tragion")
# BatchNorm is folded into the pretrained convolutions, so weight scales span 1e-4..10 and Adam
# moves every weight by ~lr per step whatever its scale: one lr of 5e-4 wrecked the detector in one
# step, 3e-5 kept it on real photos but barely learned upside-down faces (held-out AP 0.58), 3e-4 the
# reverse (0.91 upside down, real photos 0.77 -> 0.59). Relative steps do both: real photos 0.77 ->
# 0.81 in 3 epochs, upside-down 0.93 (bench/detect.py, faces set; issue 14)
DEFAULT_LR = 3e-3


class FaceTrainSet(Dataset):
    """Augmented, letterboxed samples with targets normalised to the model input."""

    def __init__(self, samples: list[Sample], input_size: int, augment_config: AugmentConfig | None, seed: int = 0):
        self.samples, self.size, self.augment_config, self.seed = samples, input_size, augment_config, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        # decode at the size training needs (JPEG draft, then a resize): twice the input side leaves crops
        # sharp, and augmentation on a 512 px image costs a third of an 800 px one (measured 24 -> ~9 ms)
        need = self.size * (2 if self.augment_config is not None and self.augment_config.crop_p > 0 else 1)
        decoded, scale = open_image_scaled(s.image, long_side=need)
        if max(decoded.size) > need:
            factor = need / max(decoded.size)
            decoded = decoded.resize((max(1, round(decoded.width * factor)), max(1, round(decoded.height * factor))),
                                     Image.BILINEAR)
            scale *= factor
        image = np.asarray(decoded)
        boxes, kps = s.boxes * np.float32(scale), s.keypoints * np.float32(scale)
        rng = None
        if self.augment_config is not None:
            # seeded by (run seed, epoch, index): identical across workers and after a resume
            rng = np.random.default_rng([self.seed, self.epoch, i])
            image, boxes, kps = augment(image, boxes, kps, rng, self.augment_config)
        boxed, lb = letterbox(image, self.size)
        if rng is not None and self.augment_config.jitter:
            # colour jitter on the letterboxed picture only: the zero border is what the model expects
            h, w = max(1, round(image.shape[0] * lb.scale)), max(1, round(image.shape[1] * lb.scale))
            window = boxed[lb.pad_y:lb.pad_y + h, lb.pad_x:lb.pad_x + w]
            boxed[lb.pad_y:lb.pad_y + h, lb.pad_x:lb.pad_x + w] = photometric(window, rng, self.augment_config.jitter)
        boxes = (torch.from_numpy(boxes) * lb.scale + torch.tensor([lb.pad_x, lb.pad_y] * 2)) / self.size
        kps = (torch.from_numpy(kps) * lb.scale + torch.tensor([lb.pad_x, lb.pad_y])) / self.size
        return to_tensor(boxed), boxes.float(), kps.float()


def collate_faces(batch):
    """Images stacked; targets (boxes, keypoints) kept per image."""
    images, boxes, kps = zip(*batch)
    return torch.stack(images), list(zip(boxes, kps))


def split_dataset(dataset: FaceDataset, val_split: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded (train, validation) split of the images."""
    n = len(dataset.samples)
    n_val = int(round(n * val_split)) if n >= 5 else 0
    order = np.random.default_rng(seed).permutation(n)
    return [dataset.samples[i] for i in order[n_val:]], [dataset.samples[i] for i in order[:n_val]]


def freeze_blocks(model, n: int) -> None:
    """Keep the first n backbone blocks at their pretrained values."""
    blocks = model.blocks()
    if not 0 <= n <= len(blocks):
        raise TransferlabError(f"--freeze {n}: {model.config.name} has {len(blocks)} backbone blocks; use 0..{len(blocks)}")
    for block in blocks[:n]:
        block.requires_grad_(False)


def param_groups(model, lr: float, weight_decay: float, scaling: str = "relative") -> list[dict]:
    """Optimizer groups of the trainable weights: one lr, or one per tensor scaled by its RMS
    ("relative": a step of a fixed share of the weight's own size, as LAMB's trust ratio)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if scaling == "none":
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}]
    if scaling != "relative":
        raise TransferlabError(f"--lr-scaling must be one of {', '.join(LR_SCALINGS)}")
    return [{"params": [p], "lr": lr * max(float(p.detach().pow(2).mean().sqrt()), 1e-3), "weight_decay": weight_decay}
            for p in params]


def detector_amp_dtype(setting: str, device: torch.device):
    """The autocast dtype for the backbone: the classifier's rule, plus bfloat16 on CPUs that run it
    natively (measured on AMX: BlazeFace-back forward+backward 21-25 -> 41-42 images/s)."""
    from ..training.loop import amp_dtype

    if setting == "auto" and device.type == "cpu":
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    return amp_dtype(setting, device)


class DetectorForward(nn.Module):
    """The training forward: the backbone under the caller's autocast, the heads in float32 (box offsets
    are in pixels, where bfloat16 keeps ~3 digits). Returns (regressors, logits)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        f1, f2 = self.model.features(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.model.heads(f1.float(), f2.float())


