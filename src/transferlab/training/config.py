"""Training options as plain data: what the command line and model.json hold. Imports no torch, so
building the CLI (`transferlab --help`) stays fast."""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..core.errors import TransferlabError
from ..core.options import AUGMENT_LEVELS, AUGMENT_POLICIES, BALANCE, BN_POLICIES, QUALITIES, SCHEDULES, STRATEGIES, SWITCHES, TRACKERS



@dataclass
class TrainConfig:
    """Every knob of a training run; the defaults work without tuning."""

    model: str = "efficientnet_lite0"
    strategy: str = "two-stage"
    epochs: int = 10
    head_epochs: int | None = None  # two-stage: epochs of phase 1 (default: a third)
    # two-stage: fine-tuning is kept only if within this many epochs its validation loss beats the
    # head's; else it stops and the head-only model is kept (what --strategy auto does). 0: always kept
    finetune_trial: int = 0
    # a wall-clock limit in seconds for the whole run (set from --budget 10m): epochs that would not
    # finish in time are not started, an epoch that runs late is cut short, the best model is kept
    budget: float | None = None
    freeze: int | str | None = None  # partial: blocks frozen (count or first trainable block's name)
    lr: float | str | None = None  # None: the strategy's default; "find": a range test picks it
    lr_mult: float = 10.0  # two-stage phase 2: head lr / stem lr
    weight_decay: float = 0.01
    batch_size: int = 32
    schedule: str = "cosine"
    warmup_epochs: float = 0.5
    label_smoothing: float | None = None  # None: the task's default (core/options.py, LABEL_SMOOTHING_*)
    # the recipe (training/recipe.py, data/transforms.py): mixup/cutmix alpha (0: off), for phases that
    # train from the images; an EMA of the weights (its decay cap; 0: off) that validates and is kept;
    # the augmentation policy on top of --augment's crops and flips (auto: the level's own)
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: float = 0.0
    progressive: float = 0.0  # image phases start at this share of the input side, for faster early epochs (0: off)
    augment_policy: str = "auto"
    tta: bool = False  # the run predicts with test-time augmentation (evaluate, predict and serve)
    # a --quality preset (training/presets.py) and why it chose each field it set
    quality: str = "default"
    quality_reasons: dict | None = None
    patience: int = 5  # early stopping on val loss, per phase; 0 disables
    augment: str = "light"
    balance: str = "none"
    bn: str = "eval"  # BatchNorm statistics: see BN_POLICIES
    val_split: float = 0.2
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto: on for CUDA, off on CPU
    workers: int | None = None
    weights: str = "default"
    image_size: int | None = None  # override the model's input size (CNNs accept others; faster when small)
    cache_features: str = "auto"  # auto | on | off: train from cached frozen-prefix activations
    # views cached per image when augment is on: view 0 is the clean image, the others augmented, cycled
    # over the epochs. bench/train.py, light augmentation, 3 seeds: 2 views 77.7% mean val accuracy,
    # 4 views 76.4%, the plain loop (a fresh augmentation every epoch) 77.8%
    cache_views: int = 2
    cache_dir: str | None = None  # keep cached features on disk here, reused across runs
    grad_clip: float = 0.0
    accum_steps: int = 1  # gradient accumulation: optimizer step every N batches
    # images per forward/backward pass within a batch (the optimizer still steps on the whole batch).
    # auto: device.CPU_PASS_IMAGES on CPU when splitting is exact (no BatchNorm layer computes batch
    # statistics), else the whole batch; off: the whole batch; or a number
    micro_batch: str = "auto"
    # auto: when a CPU batch cannot be split exactly, recompute the high-resolution blocks in backward
    # instead of keeping their activations (BlockNet.high_resolution_blocks); off; or how many leading blocks
    grad_checkpointing: str = "auto"
    sync_bn: bool = False  # several GPUs: SyncBatchNorm for the trainable BatchNorm layers
    max_bad_steps: int = 10  # consecutive non-finite losses before the run stops
    # train warns when val/test share images with train (exact content; near duplicates too where the
    # penultimate features are cached anyway) and records the count in model.json; False skips it
    audit: bool = True
    exclude: str | None = None  # a file listing images to leave out (transferlab audit --write-exclude)
    # a table dataset (CSV/TSV, JSON lines, DataFrame; data/tables.py): the image and label columns (default:
    # found by their common names) and the separator of several labels per cell; val_data: a validation table
    image_col: str | None = None
    label_col: str | None = None
    label_delim: str | None = None  # default a space; "none": one label per cell
    advice: dict | None = None  # set by --strategy auto: the advisor's numbers and reasons
    # multi-label: one decision threshold for every label instead of those from validation F1
    threshold: float | None = None
    # --- detectors (a box dataset) ---
    data_format: str = "auto"  # annotation format: see core.options.ANNOTATION_FORMATS
    val_data: str | None = None  # separate validation data (else val_split of the data is held out)
    # "relative": each tensor's lr is lr x its RMS (BlazeFace's folded BatchNorm leaves weight scales
    # spanning 1e-4..10); "none": one lr for all
    lr_scaling: str = "none"
    score_threshold: float | None = None  # the saved detector's thresholds (None: the detector's defaults)
    iou_threshold: float | None = None
    box_augment: dict | None = None  # detect.augment.AugmentConfig fields (None: its defaults)
    # experiment trackers to log to: "tensorboard", "mlflow" or both comma-separated (training/tracking.py)
    log: str | None = None

    def validate(self) -> None:
        """One line naming the first option with an invalid value."""
        checks = [
            (self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.balance in BALANCE, f"--balance must be one of {', '.join(BALANCE)}"),
            (self.bn in BN_POLICIES, f"--bn must be one of {', '.join(BN_POLICIES)}"),
            (self.augment in AUGMENT_LEVELS, f"--augment must be one of {', '.join(AUGMENT_LEVELS)}"),
            (self.quality in QUALITIES, f"--quality must be one of {', '.join(QUALITIES)}"),
            (self.augment_policy in AUGMENT_POLICIES,
             f"--augment-policy must be one of {', '.join(AUGMENT_POLICIES)}"),
            (self.mixup >= 0 and self.cutmix >= 0, "--mixup and --cutmix take an alpha >= 0 (0: off)"),
            (0 <= self.ema < 1, "--ema takes a decay in [0, 1), such as 0.999 (0: off)"),
            (0 <= self.progressive < 1, "--progressive must be between 0 (off) and 1, e.g. 0.6"),
            (self.label_smoothing is None or 0 <= self.label_smoothing < 1,
             "--label-smoothing takes a value in [0, 1), such as 0.1 (0: off)"),
            (self.cache_features in SWITCHES, "--cache-features must be auto, on or off"),
            (self.amp in SWITCHES, "--amp must be auto, on or off"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.accum_steps >= 1, "--accum-steps must be at least 1"),
            (str(self.grad_checkpointing) in ("auto", "off") or str(self.grad_checkpointing).isdigit(),
             "--grad-checkpointing must be auto, off or a number of blocks"),
            (str(self.micro_batch) in ("auto", "off") or str(self.micro_batch).isdigit() and int(self.micro_batch) > 0,
             "--micro-batch must be auto, off or a positive number of images"),
            (self.lr is None or self.lr == "find" or float(self.lr) > 0, "--lr must be positive or 'find'"),
            (self.finetune_trial >= 0, "--finetune-trial must be 0 or more epochs"),
            (self.budget is None or self.budget > 0, "--budget must be a positive duration such as 90s, 10m or 1h"),
            (all(t.strip().lower() in TRACKERS for t in (self.log or "").split(",") if t.strip()),
             f"--log must be {' or '.join(TRACKERS)} (or both, comma-separated)"),
        ]
        for ok, message in checks:
            if not ok:
                raise TransferlabError(message)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
