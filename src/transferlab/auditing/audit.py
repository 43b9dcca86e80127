"""Audit a dataset before training: duplicates (exact and near, within and across splits), likely label
errors, outliers, and the cheap checks (imbalance, tiny images, unreadable files).

Everything comes from the pretrained model's penultimate features, computed through training's own
frozen-prefix path (BatchSource, the eval view at freeze point all-but-head) and stored in the same
FeatureStore under --cache-dir, so a later `train --cache-dir` reuses them. The statistics of label
errors and outliers are cleanlab's (confident learning on out-of-fold probabilities of a linear probe;
kNN distances in feature space), not re-implemented here. A multi-label table (several labels per
image) is audited in its multi-label form: the probe is one-vs-rest (a logistic regression per label)
and the label errors are cleanlab's multilabel_classification ones. The data folder is only read.
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import TransferlabError
from ..data.folders import DatasetScan, file_digests, scan_dataset
from ..data.images import image_sizes
from .near_duplicates import NEAR_DUPLICATE_COPY_MARGIN, NEAR_DUPLICATE_COSINE, near_duplicate_pairs, normalized_rows

# Near duplicates: see NEAR_DUPLICATE_COPY_MARGIN in training/features.py for the rule and the
# measurements behind it (bench/audit.py --calibrate prints them again).
# tiny: shorter side below 32 px and below half the dataset's median (so MNIST's 28 px digits are not
# all flagged, while a 6 px thumbnail among them is)
TINY_SIDE = 32
FOLDS = 5
# outliers: mean distance to the k nearest neighbours (cleanlab's OutOfDistribution on features);
# flagged when it is this many robust standard deviations (MAD) above the median
OUTLIER_K = 10
OUTLIER_MADS = 3.0
# the one-vs-rest probe of multi-label data: its inverse regularisation strength on the unit feature rows
# (see out_of_fold_label_scores for the measurement)
MULTILABEL_PROBE_C = 10.0
KINDS = ("exact_duplicate", "near_duplicate", "label_issue", "outlier", "tiny", "unreadable")

INSTALL_HINT = "the audit needs cleanlab: pip install 'transferlab[audit]' (or pip install cleanlab)"


def require_cleanlab():
    """The cleanlab module, or a one-line error naming the install command."""
    try:
        import cleanlab  # noqa: F401
        import cleanlab.filter  # noqa: F401
        import cleanlab.outlier  # noqa: F401
    except ImportError:
        raise TransferlabError(INSTALL_HINT) from None
    return cleanlab


@dataclass
class AuditResult:
    """What an audit found: one record per issue, plus the dataset's counts and timings."""

    root: str
    classes: list[str]
    split_sizes: dict[str, int]
    split_source: str
    issues: list[dict]
    class_counts: dict[str, dict[str, int]]
    imbalance: float
    threshold: float  # feature cosine of near-duplicate candidates
    model: str
    timings: dict = field(default_factory=dict)
    top_outliers: list[str] = field(default_factory=list)  # the most unusual images, flagged or not
    multilabel: bool = False  # several labels per image: `classes` are labels, issues give label sets

    def of_kind(self, kind: str) -> list[dict]:
        """The issues of one kind (see KINDS), in the order found (ranked where ranked)."""
        return [i for i in self.issues if i["kind"] == kind]

    @property
    def cross_split_duplicates(self) -> int:
        """Duplicate pairs (exact or near) whose two images lie in different splits: leakage."""
        return sum(1 for i in self.issues if i["kind"].endswith("duplicate") and i.get("cross_split"))

    def counts(self) -> dict[str, int]:
        """Issues per kind."""
        c = Counter(i["kind"] for i in self.issues)
        return {k: c.get(k, 0) for k in KINDS}

    def exclude_paths(self) -> list[tuple[str, str]]:
        """(path, reason) of the files to leave out: of each duplicate pair, the copy outside train (or
        the second one within a split); label issues; outliers; unreadable and tiny files."""
        out: dict[str, str] = {}
        for i in self.issues:
            kind = i["kind"]
            if kind.endswith("duplicate"):
                drop = i["other"] if i["split"] == "train" and i["other_split"] != "train" else i["path"]
                keep = i["path"] if drop == i["other"] else i["other"]
                out.setdefault(drop, f"{kind} of {keep}")
            elif kind == "label_issue":
                out.setdefault(i["path"], f"label issue: filed under {i['given']}, looks like {i['suggested']}")
            else:
                out.setdefault(i["path"], kind)
        return sorted(out.items())

    def summary(self) -> str:
        """A few lines for the terminal."""
        c = self.counts()
        sizes = ", ".join(f"{k}={v}" for k, v in self.split_sizes.items() if v)
        kind = "labels (multi-label)" if self.multilabel else "classes"
        lines = [f"{self.root}: {len(self.classes)} {kind}, {sum(self.split_sizes.values())} images ({sizes})",
                 f"  duplicates: {c['exact_duplicate']} exact, {c['near_duplicate']} near (pixels as close as "
                 f"copies made of the same image, within {NEAR_DUPLICATE_COPY_MARGIN}x); "
                 f"{self.cross_split_duplicates} pairs across splits (leakage)",
                 f"  likely label errors: {c['label_issue']}; outliers: {c['outlier']}",
                 f"  tiny images: {c['tiny']}; unreadable: {c['unreadable']}; "
                 f"imbalance {self.imbalance:.1f}x"]
        if self.timings:
            lines.append(f"  {self.timings.get('total_s', 0):.1f}s (features {self.timings.get('features_s', 0):.1f}s"
                         f"{', from the cache' if self.timings.get('features_cached') else ''})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain data for --json."""
        return {"root": self.root, "model": self.model, "classes": self.classes, "multilabel": self.multilabel,
                "splits": self.split_sizes,
                "split_source": self.split_source, "class_counts": self.class_counts,
                "imbalance": self.imbalance, "near_duplicate_cosine": self.threshold, "counts": self.counts(),
                "cross_split_duplicates": self.cross_split_duplicates, "timings": self.timings,
                "issues": self.issues, "top_outliers": self.top_outliers}


# --- features -----------------------------------------------------------------------------------
def penultimate_features(scan: DatasetScan, model: str = "efficientnet_lite0", weights: str = "default",
                         image_size: int | None = None, cache_dir=None, batch_size: int = 32,
                         workers: int | None = None, seed: int = 0, device: str = "auto",
                         progress: bool = True) -> dict[str, np.ndarray]:
    """Split -> penultimate features of its images (in scan order), through training's frozen-prefix
    path: the same model state, decoding, eval transform and FeatureStore key that `train` uses for
    the clean view at freeze point all-but-head (two-stage's first phase, feature-extract), so either
    command reuses what the other cached. Images that fail to decode are dropped from the scan."""
    import torch

    from ..core.device import pick_device
    from ..core.distributed import DistContext
    from ..models import create_model
    from ..training.batches import BatchSource
    from ..training.config import TrainConfig

    cfg = TrainConfig(model=model, weights=weights, image_size=image_size, cache_dir=str(cache_dir) if cache_dir
                      else None, batch_size=batch_size, workers=workers, seed=seed, device=device)
    dev = pick_device(device)
    torch.manual_seed(seed)
    net = create_model(model, num_classes=len(scan.classes), weights=weights)
    net.to(dev)
    if image_size:
        net.preprocessing = net.preprocessing.resized(image_size)

    def log(message):
        if progress:
            print(message, file=sys.stderr)

    source = BatchSource(scan, net.preprocessing, cfg, dev, DistContext(), log, progress)
    n = len(net.block_names) - 1  # everything before the head
    out = {}
    for split, samples in scan.splits.items():
        if samples:
            out[split] = normalized_rows(source._cached_prefix(net, split, n, "eval", 0)).numpy()
        else:
            out[split] = np.zeros((0, 1), dtype=np.float32)
    return out


# --- the checks ---------------------------------------------------------------------------------
def _records(scan: DatasetScan) -> list[dict]:
    """One record per image: path, split, label (index), labels (indices; several for multi-label
    data) and class (the label's name, or the names of a multi-label image's labels)."""
    return [{"path": str(s.path), "split": split, "label": s.label, "labels": list(s.indices),
             "class": label_set(scan.classes, s.indices) if scan.multilabel else scan.classes[s.label]}
            for split, samples in scan.splits.items() for s in samples]


def label_set(classes: list[str], indices) -> str:
    """A multi-label image's labels as one string ("fish + shark"; "(none)" for an image without)."""
    return " + ".join(classes[j] for j in indices) or "(none)"


def duplicate_issues(files: list[dict], digests: list[str], features: np.ndarray,
                     threshold: float = NEAR_DUPLICATE_COSINE) -> list[dict]:
    """Exact duplicates (same sha256) and near duplicates (near_duplicates.near_duplicate_pairs, with
    feature candidates at cosine >= threshold), one record per pair, closest first, with both splits; a
    pair in two splits is leakage (cross_split). score: the pixel distance (grey levels; 0 for exact
    copies); copies: the farthest copy made of either image; cosine: the features'."""
    import torch

    issues = []
    by_digest: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        if d:
            by_digest.setdefault(d, []).append(i)
    exact = set()
    for group in by_digest.values():
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                exact.add((group[a], group[b]))
    pairs = [(i, j, 0.0, 0.0, 1.0, "exact_duplicate") for i, j in sorted(exact)]
    f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    paths = [r["path"] for r in files]
    near = near_duplicate_pairs(f, paths, cosine=threshold, pixel_candidates=True)
    pairs += [(i, j, d, own, cos, "near_duplicate") for i, j, cos, d, own in near if (i, j) not in exact]
    for i, j, score, own, cos, kind in pairs:
        a, b = files[i], files[j]
        if a["split"] != "train" and b["split"] == "train":  # the train copy first
            a, b = b, a
        issues.append({"kind": kind, "path": a["path"], "split": a["split"], "other": b["path"],
                       "other_split": b["split"], "cross_split": a["split"] != b["split"], "score": round(score, 2),
                       "copies": round(own, 2), "cosine": round(cos, 4), "given": a["class"], "other_class": b["class"]})
    issues.sort(key=lambda r: (r["kind"] != "exact_duplicate", not r["cross_split"], r["score"]))
    return issues


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, folds: int = FOLDS,
                              seed: int = 0) -> np.ndarray:
    """Predicted probabilities of every image from a logistic-regression probe that did not see it
    (stratified k-fold over the features): what confident learning needs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    classes = int(labels.max()) + 1
    k = max(2, min(folds, int(np.bincount(labels, minlength=classes)[np.bincount(labels) > 0].min())))
    probs = np.zeros((len(labels), classes))
    for fit, held in StratifiedKFold(k, shuffle=True, random_state=seed).split(features, labels):
        clf = LogisticRegression(C=1.0, max_iter=300)
        clf.fit(features[fit], labels[fit])
        probs[np.ix_(held, clf.classes_)] = clf.predict_proba(features[held])
    probs = np.clip(probs, 1e-6, None)
    return probs / probs.sum(1, keepdims=True)


def out_of_fold_label_scores(features: np.ndarray, targets: np.ndarray, folds: int = FOLDS,
                             seed: int = 0) -> np.ndarray:
    """The multi-label form of out_of_fold_probabilities: every image's score for each label (columns of
    the 0/1 `targets`) from a one-vs-rest probe, a logistic regression per label, that did not see it
    (shuffled k-fold over the features). A label with one value in a fold's training images scores
    the held-out images at that value.

    C=MULTILABEL_PROBE_C, not the single-label probe's 1: on the unit rows a probe per label at C=1
    scores near the base rate (on generated shapes, 0.61 was the probe's probability of the given
    yes/no of the median image's most doubtful label; 0.80 at C=10). Six sets of 120 generated shape
    images (tests/conftest.py), 8 flipped labels in each: confident learning found 36 of the 48 with 29
    false alarms at C=1, 41 with 13 at C=10, 45 with 14 at C=100; on standardised features at C=0.1,
    45 with 49 false alarms."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    targets = np.asarray(targets, dtype=bool)
    scores = np.zeros(targets.shape)
    k = max(2, min(folds, len(targets)))
    for fit, held in KFold(k, shuffle=True, random_state=seed).split(features):
        for j in range(targets.shape[1]):
            y = targets[fit, j]
            if y.all() or not y.any():
                scores[held, j] = float(y[0])
                continue
            probe = LogisticRegression(C=MULTILABEL_PROBE_C, max_iter=300).fit(features[fit], y)
            scores[held, j] = probe.predict_proba(features[held])[:, 1]
    return np.clip(scores, 1e-6, 1 - 1e-6)


def multilabel_label_issues(files: list[dict], features: np.ndarray, classes: list[str], folds: int = FOLDS,
                            seed: int = 0) -> list[dict]:
    """Likely label errors of multi-label data, most likely first: cleanlab's multi-label
    find_label_issues on the one-vs-rest probe's out-of-fold scores. given: the image's labels;
    suggested: the labels the probe gives (score >= 0.5); score: the probe's probability of the given
    yes/no of the image's most doubtful label; suggested_score: the same for the suggested labels."""
    from cleanlab.multilabel_classification.filter import find_label_issues

    targets = np.zeros((len(files), len(classes)), dtype=bool)
    for row, f in enumerate(files):
        targets[row, f["labels"]] = True
    if len(files) < 2 or not (targets.any(0) & ~targets.all(0)).any():
        return []
    scores = out_of_fold_label_scores(features, targets, folds, seed)
    given = [list(f["labels"]) for f in files]
    ranked = find_label_issues(given, scores, filter_by="both", return_indices_ranked_by="self_confidence")
    suggested = scores >= 0.5
    agreement = np.where(targets, scores, 1 - scores)  # the probe's probability of each given yes/no
    return [{"kind": "label_issue", "path": files[i]["path"], "split": files[i]["split"],
             "given": files[i]["class"], "suggested": label_set(classes, np.flatnonzero(suggested[i])),
             "score": round(float(agreement[i].min()), 4),
             "suggested_score": round(float(np.maximum(scores[i], 1 - scores[i]).min()), 4)}
            for i in ranked]


def label_issues(files: list[dict], features: np.ndarray, classes: list[str], folds: int = FOLDS,
                 seed: int = 0) -> list[dict]:
    """Likely label errors, most likely first: cleanlab's find_label_issues on out-of-fold probabilities."""
    from cleanlab.filter import find_label_issues

    labels = np.array([f["label"] for f in files])
    if len(set(labels.tolist())) < 2:
        return []
    probs = out_of_fold_probabilities(features, labels, folds, seed)
    # filter_by "both" (an image is an issue under both prune-by-class and prune-by-noise-rate): on the
    # bench (5% flipped) precision 0.76-0.88 at recall 0.70-0.77, where cleanlab's default
    # prune_by_noise_rate gave 0.48-0.63 at about the same recall
    ranked = find_label_issues(labels, probs, filter_by="both", return_indices_ranked_by="self_confidence")
    out = []
    for i in ranked:
        suggested = int(probs[i].argmax())
        out.append({"kind": "label_issue", "path": files[i]["path"], "split": files[i]["split"],
                    "given": classes[labels[i]], "suggested": classes[suggested],
                    "score": round(float(probs[i, labels[i]]), 4),  # the probe's probability of the given class
                    "suggested_score": round(float(probs[i, suggested]), 4)})
    return out


def outlier_scores(features: np.ndarray, k: int = OUTLIER_K) -> np.ndarray:
    """cleanlab's out-of-distribution score of every image from its features (kNN distance; lower is
    more unusual)."""
    from cleanlab.outlier import OutOfDistribution

    k = max(1, min(k, len(features) - 1))
    return OutOfDistribution(params={"k": k}).fit_score(features=features, verbose=False)


def outlier_issues(files: list[dict], features: np.ndarray, max_flagged: int | None = None,
                   ranking: list | None = None) -> list[dict]:
    """Images far from every class: their mean distance to the nearest images in feature space (cleanlab's
    OutOfDistribution) OUTLIER_MADS robust deviations or more above the median, strangest first.
    `ranking`, when a list, receives every index, most unusual first."""
    if len(features) < 3:
        return []
    scores = outlier_scores(features)
    if ranking is not None:
        ranking.extend(int(i) for i in np.argsort(scores))
    # cleanlab's score is exp(-t * mean kNN distance): its log is linear in the distance, where a robust
    # z-score means something (in the score itself the tail is squashed towards 0)
    distance = -np.log(np.clip(scores, 1e-30, None))
    median = float(np.median(distance))
    mad = float(np.median(np.abs(distance - median))) * 1.4826 or 1e-9
    z = (distance - median) / mad
    flagged = [int(i) for i in np.argsort(-z) if z[i] >= OUTLIER_MADS]
    if max_flagged is not None:
        flagged = flagged[:max_flagged]
    return [{"kind": "outlier", "path": files[i]["path"], "split": files[i]["split"], "given": files[i]["class"],
             "score": round(float(scores[i]), 4), "robust_z": round(float(z[i]), 2)}
            for i in flagged]


# --- the audit ----------------------------------------------------------------------------------
def audit(data, model: str = "efficientnet_lite0", out=None, weights: str = "default", image_size: int | None = None,
          cache_dir=None, val_split: float = 0.2, seed: int = 0, threshold: float = NEAR_DUPLICATE_COSINE,
          folds: int = FOLDS, batch_size: int = 32, workers: int | None = None, device: str = "auto",
          exclude=None, progress: bool = True) -> AuditResult:
    """Audit an image folder or a table (the layouts `train` accepts, split as `train` splits it) for
    duplicates, leakage across splits, likely label errors (in their multi-label form for a table of
    images with several labels), outliers, imbalance, tiny and unreadable images.
    With `out`, writes audit.html, audit.csv and audit.json there. Reads the data, never writes it."""
    require_cleanlab()
    t0 = time.perf_counter()
    scan = scan_dataset(data, val_split, seed, exclude=exclude, multilabel=True)
    t_feat = time.perf_counter()
    features = penultimate_features(scan, model, weights, image_size, cache_dir, batch_size, workers, seed, device,
                                    progress)
    t_feat = time.perf_counter() - t_feat
    files = _records(scan)
    feats = np.concatenate([features[split] for split, samples in scan.splits.items() if samples])
    t1 = time.perf_counter()
    digests = file_digests([f["path"] for f in files])
    issues = duplicate_issues(files, digests, feats, threshold)
    t_dup = time.perf_counter() - t1
    t1 = time.perf_counter()
    issues += (multilabel_label_issues if scan.multilabel else label_issues)(files, feats, scan.classes, folds, seed)
    t_label = time.perf_counter() - t1
    t1 = time.perf_counter()
    ranking: list[int] = []
    issues += outlier_issues(files, feats, ranking=ranking)
    t_out = time.perf_counter() - t1
    sizes = image_sizes([f["path"] for f in files])
    known = [min(s) for s in sizes if s is not None]
    tiny = min(TINY_SIDE, float(np.median(known)) / 2) if known else TINY_SIDE
    for f, size in zip(files, sizes):
        if size is not None and min(size) < tiny:
            issues.append({"kind": "tiny", "path": f["path"], "split": f["split"], "given": f["class"],
                           "score": min(size), "size": list(size)})
    issues += [{"kind": "unreadable", "path": p, "split": "", "reason": why} for p, why in scan.skipped]
    total = time.perf_counter() - t0
    result = AuditResult(
        root=str(scan.root), classes=scan.classes, split_sizes={k: len(v) for k, v in scan.splits.items()},
        split_source=scan.split_source, issues=issues, class_counts={k: scan.counts(k) for k in scan.splits},
        imbalance=round(scan.imbalance, 3), threshold=threshold, model=model,
        timings={"total_s": round(total, 2), "features_s": round(t_feat, 2), "duplicates_s": round(t_dup, 2),
                 "label_issues_s": round(t_label, 2), "outliers_s": round(t_out, 2), "images": len(files)},
        top_outliers=[files[i]["path"] for i in ranking[:50]], multilabel=scan.multilabel)
    if out is not None:
        from .report import write_audit

        write_audit(result, out)
    return result
