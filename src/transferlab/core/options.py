"""The vocabulary of choices shared by every layer and by the command line; imports nothing heavy, so
building the CLI (`transferlab --help`) stays fast."""

FEATURE_EXTRACT, PARTIAL, FINETUNE, SCRATCH, TWO_STAGE, AUTO = (
    "feature-extract", "partial", "finetune", "scratch", "two-stage", "auto")
STRATEGIES = (FEATURE_EXTRACT, PARTIAL, FINETUNE, SCRATCH, TWO_STAGE, AUTO)
SCHEDULES = ("cosine", "onecycle", "constant")
BALANCE = ("none", "weights", "sampler")
AUGMENT_LEVELS = ("none", "light", "strong")
QUALITIES = ("fast", "default", "best")  # --quality presets (training/presets.py)
# torchvision's automatic augmentation policies; auto: the level's own (TrivialAugment for strong, else none)
AUGMENT_POLICIES = ("auto", "none", "trivialaugment", "randaugment", "autoaugment")
# BatchNorm statistics in training:
# frozen: BatchNorm in frozen blocks keeps ImageNet statistics (eval mode), trainable blocks update theirs;
# eval:   every BatchNorm keeps its statistics, only its affine weights train (Keras' advice for
#         fine-tuning on small data: batch statistics of a few images are noisier than ImageNet's);
# train:  every BatchNorm updates its statistics, frozen blocks included.
BN_POLICIES = ("frozen", "eval", "train")
SWITCHES = ("auto", "on", "off")  # --amp, --cache-features
# --label-smoothing's default, per task (docs/benchmarks.md). One label per image: at the defaults 0.1 changed
# clothing's accuracy by 0 and lost 1-2 points on flowers and EuroSAT. Several labels: on aquarium the head phase
# ended 0.4-0.7 mAP higher in all five pairs with the same runs unsmoothed, the run +0.15 on the mean, and the
# tuned thresholds still beat 0.5 cross-fitted; on digit-grids it gained on three pairs of four
LABEL_SMOOTHING_ONE_LABEL, LABEL_SMOOTHING_MULTILABEL = 0.0, 0.1
TOGGLES = ("on", "off")  # an option with no auto (--tta)
LR_SCALINGS = ("relative", "none")  # --lr-scaling: see detect/training.py
EXPORT_FORMATS = ("torchscript", "onnx")
QUANTIZE_MODES = ("int8", "fp16")  # ONNX only: int8 for CPUs and phones, fp16 for GPUs
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")  # ONNX Runtime's int8 calibrators
RUN_KINDS = ("classifier", "detector")
CLASSIFY, DETECT = "classify", "detect"
MODEL_TASKS = (CLASSIFY, DETECT)  # what a model does; its run folder is of the RUN_KINDS kind in the same place
# inference engines of predict and serve; auto and the int8 rule: deploy.runtime.choose_engine
BACKENDS = ("auto", "torch", "onnxruntime", "onnxruntime-int8")
DEFAULT_DETECTOR = "blazeface_front"  # the model of `transferlab detect ...` and of a detector run by default
# face annotation formats (detect/data.py reads them); auto tells them by the files
ANNOTATION_FORMATS = ("auto", "wider", "voc", "coco", "yolo", "csv")
SWEEP_POINTS = 5  # freeze points tried by default: 0, all-but-head and three in between
SWEEP_ETA = 3  # keep the best third each rung (Hyperband's default)
# experiment trackers a run can log to (train --log, sweep --log; training/tracking.py)
TRACKERS = ("tensorboard", "mlflow")
# the columns `transferlab runs` sorts by (runs/table.py); "metric" is the run's best validation metric
RUN_SORT_KEYS = ("created", "name", "kind", "model", "strategy", "data", "metric", "epochs", "wall_s")
# class-activation map methods of predict --explain (pytorch-grad-cam's GradCAM, GradCAM++, EigenCAM;
# inference/explain.py)
EXPLAIN_METHODS = ("gradcam", "gradcam++", "eigencam")
