"""The vocabulary of choices shared by every layer and by the command line; imports nothing heavy, so
building the CLI (`transferlab --help`) stays fast."""

STRATEGIES = ("feature-extract", "partial", "finetune", "scratch", "two-stage", "auto")
SCHEDULES = ("cosine", "onecycle", "constant")
BALANCE = ("none", "weights", "sampler")
AUGMENT_LEVELS = ("none", "light", "strong")
# BatchNorm statistics in training:
# frozen: BatchNorm in frozen blocks keeps ImageNet statistics (eval mode), trainable blocks update theirs;
# eval:   every BatchNorm keeps its statistics, only its affine weights train (Keras' advice for
#         fine-tuning on small data: batch statistics of a few images are noisier than ImageNet's);
# train:  every BatchNorm updates its statistics, frozen blocks included.
BN_POLICIES = ("frozen", "eval", "train")
EXPORT_FORMATS = ("torchscript", "onnx")
QUANTIZE_MODES = ("int8", "fp16")  # ONNX only: int8 for CPUs and phones, fp16 for GPUs
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")  # ONNX Runtime's int8 calibrators
RUN_KINDS = ("classifier", "detector")
SWEEP_POINTS = 5  # freeze points tried by default: 0, all-but-head and three in between
SWEEP_ETA = 3  # keep the best third each rung (Hyperband's default)
