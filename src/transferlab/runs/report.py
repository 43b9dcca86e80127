"""Plots and a readable summary of a run: curves.png, confusion.png, sweep.png, report.md; every file atomic."""
from __future__ import annotations

from pathlib import Path

from ..core.io import atomic_path, atomic_write_text


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported on first use: it takes seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


METRIC_NAMES = {"val_acc": "accuracy", "val_map": "mAP"}


def plot_curves(history: list[dict], path: Path, metric: str = "val_acc") -> None:
    """Loss and the run's metric (accuracy, or mAP for multi-label) per epoch, train and val, with a
    dotted line where a new phase starts."""
    plt = pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    train_metric = metric.replace("val_", "train_")
    if all(train_metric in r for r in history):
        ax_acc.plot(epochs, [r[train_metric] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [r[metric] for r in history], "o-", label="val")
    for prev, row in zip(history, history[1:]):
        if row["phase"] != prev["phase"]:  # mark where a new phase (e.g. unfreezing) starts
            for ax in (ax_loss, ax_acc):
                ax.axvline(row["epoch"] - 0.5, color="grey", linestyle=":")
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.set(title=METRIC_NAMES.get(metric, metric), xlabel="epoch", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, plt)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str = "confusion") -> None:
    """The confusion matrix as a heat map (rows: true class), with counts for up to 30 classes."""
    plt = pyplot()
    k = len(classes)
    size = min(14, 3 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(confusion, cmap="Blues")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=90)
    ax.set_yticklabels(classes)
    if k <= 30:
        peak = max(max(row) for row in confusion) or 1
        for i, row in enumerate(confusion):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black",
                        fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path, plt)


def plot_metric(history: list[dict], key: str, path: Path, title: str) -> None:
    """One metric against the epoch (rows without it are left out)."""
    plt = pyplot()
    rows = [r for r in history if r.get(key) is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], "o-")
    ax.set(title=title, xlabel="epoch", ylabel=key)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, plt)


def plot_sweep(trials: list, blocks: list[str], path: Path) -> None:
    """Validation accuracy (mAP for multi-label data) against freeze point, one line per rung (longer
    runs, fewer points)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for rung in sorted({t.rung for t in trials}):
        ts = sorted((t for t in trials if t.rung == rung), key=lambda t: t.freeze)
        ax.plot([t.freeze for t in ts], [t.score for t in ts], "o-", label=f"rung {rung + 1}: {ts[0].epochs} epochs")
    points = sorted({t.freeze for t in trials})
    ax.set_xticks(points, [f"{n}\n{blocks[n]}" for n in points], fontsize=8)
    ax.set_xlabel("freeze point (blocks frozen / first trainable block)")
    ax.set_ylabel("validation mAP" if any(t.val_map is not None for t in trials) else "validation accuracy")
    ax.set_title("freeze-depth search")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path, plt)


def plot_pr_curves(curves: dict, path: Path, title: str = "Face detection, IoU 0.5") -> None:
    """Precision against recall, one line per model, AP in the legend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, c in curves.items():
        ax.plot(c.recall, c.precision, label=f"{name} (AP {c.ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    _save(fig, path, plt)


def _save(fig, path: Path, plt) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_label_pr_curves(predictions: list[dict], classes: list[str], path: Path, title: str) -> None:
    """A multi-label run's precision/recall curve of every label (up to 20, the most frequent), AP in
    the legend."""
    from .view import label_pr_curves

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for c in label_pr_curves(predictions, classes, points=len(predictions)):
        ax.plot(c["recall"], c["precision"], label=f"{c['label']} (AP {c['ap']:.3f})")
    ax.set(title=title, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, plt)


def write_report(out: Path, meta: dict, history: list[dict], evaluations: dict) -> None:
    """curves.png, confusion.png (validation; pr_curves.png per label for multi-label) and report.md."""
    out = Path(out)
    multilabel = bool(meta.get("thresholds"))
    if history:
        plot_curves(history, out / "curves.png", "val_map" if multilabel else "val_acc")
    main = evaluations.get("test") or evaluations.get("val")
    split = "test" if "test" in evaluations else "val"
    if main and multilabel and main.get("predictions"):
        plot_label_pr_curves(main["predictions"], main["classes"], out / "pr_curves.png", f"precision/recall ({split})")
    elif main and not multilabel:
        plot_confusion(main["confusion"], main["classes"], out / "confusion.png", title=f"confusion ({split})")
    atomic_write_text(out / "report.md", render_report(meta, history, evaluations))


def render_multilabel_evaluation(split: str, ev: dict) -> list[str]:
    """A multi-label evaluation's section of report.md."""
    lines = ["", f"## {split} set: mAP {ev['map']:.4f}, micro F1 {ev['micro_f1']:.4f}, macro F1 {ev['macro_f1']:.4f}, "
                 f"exact match {ev['exact_match']:.4f}", "",
             "| label | AP | precision | recall | F1 | threshold | support |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {'-' if r['ap'] is None else format(r['ap'], '.3f')} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r['f1']:.3f} | {r['threshold']:.2f} | {r['support']} |" for r in ev["per_label"]]
    if ev["most_confident_errors"]:
        lines += ["", "Most confidently wrong labels:", ""]
        lines += [f"- `{w['path']}`: {w['label']} {w['error']} (score {w['score']:.2f})"
                  for w in ev["most_confident_errors"]]
    return lines


def render_report(meta: dict, history: list[dict], evaluations: dict) -> str:
    """report.md's text."""
    m = meta["metrics"]
    multilabel = bool(meta.get("thresholds"))
    metric = "val_map" if multilabel else "val_acc"
    lines = [
        f"# transferlab run: {meta['architecture']} / {meta['strategy']}",
        "",
        f"- classes ({meta['num_classes']}): {', '.join(meta['classes'])}",
        f"- strategy: **{meta['strategy']}**, frozen blocks at the end: {meta['freeze']} "
        f"({', '.join(meta['frozen_blocks']) or 'none'}), BatchNorm policy: {meta['bn_policy']}",
        "- phases: " + "; ".join(f"{p['name']} {p['epochs']} epochs, freeze {p['freeze']}, lr {p['lr']:.2e}"
                                 + (f" (x1/{p['lr_mult']:g} at the first trainable block)" if p['lr_mult'] != 1 else "")
                                 for p in meta["phases"]),
        f"- best val {METRIC_NAMES[metric]} **{m[metric]:.4f}** (loss {m['val_loss']:.4f}) at epoch {m['best_epoch']} "
        f"of {m['epochs_run']}",
    ]
    if multilabel:
        lines.insert(3, "- multi-label: sigmoid outputs, binary cross-entropy; per-label thresholds (half "
                        "the best validation F1): " + ", ".join(f"{c} {t:.2f}" for c, t in zip(meta["classes"], meta["thresholds"])))
    leak = meta.get("leakage")
    if leak:
        near = "not checked" if leak.get("near") is None else leak["near"]
        lines.append(f"- images shared between splits (leakage): {leak['exact']} exact copies in val/test, "
                     f"near duplicates of train images in val: {near}")
    if "advice" in meta:
        adv = meta["advice"]
        lines += ["", "## Why this strategy", "", adv.get("explanation", "")]
        if adv.get("plan"):
            lines += ["", "Adaptive plan (`--strategy auto`): " + "; ".join(adv["plan"]["reasons"]) + "."]
    quality = meta.get("config", {}).get("quality_reasons")
    if quality:
        lines += ["", f"## Quality preset `{meta['config']['quality']}`", ""] + [f"- {why}" for why in quality.values()]
    if meta.get("decisions") or meta.get("budget"):
        lines += ["", "## Decisions during training", ""]
        lines += [f"- epoch {d['epoch']}, {d['event']}: {d['text']}" for d in meta.get("decisions", [])]
        if meta.get("budget"):
            b = meta["budget"]
            lines.append(f"- budget {b['seconds']:.0f}s: {b['used_s']:.0f}s used before writing the run")
        lines.append(f"- kept: the model of epoch {m['best_epoch']} ({m.get('best_phase')} phase)")
    if multilabel:
        lines += ["", "## Epochs", "", "| epoch | phase | train loss | val loss | val mAP | val macro F1 (0.5) | lr | s |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['epoch']} | {r['phase']} | {r['train_loss']:.4f} | {r['val_loss']:.4f} | {r['val_map']:.3f} | "
                  f"{r['val_f1']:.3f} | {r['lr']:.2e} | {r['time_s']:.1f} |" for r in history]
        for split, ev in evaluations.items():
            lines += render_multilabel_evaluation(split, ev)
        lines += ["", "![curves](curves.png)", "", "![precision/recall per label](pr_curves.png)", ""]
        return "\n".join(lines)
    lines += ["", "## Epochs", "", "| epoch | phase | train loss | train acc | val loss | val acc | lr | s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in history:
        lines.append(f"| {r['epoch']} | {r['phase']} | {r['train_loss']:.4f} | {r['train_acc']:.3f} | "
                     f"{r['val_loss']:.4f} | {r['val_acc']:.3f} | {r['lr']:.2e} | {r['time_s']:.1f} |")
    for split, ev in evaluations.items():
        lines += ["", f"## {split} set: accuracy {ev['accuracy']:.4f}, macro F1 {ev['macro_f1']:.4f}", "",
                  "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
                  for r in ev["per_class"]]
        if ev["most_confident_errors"]:
            lines += ["", "Most confidently wrong:", ""]
            lines += [f"- `{w['path']}`: {w['true']} predicted as {w['predicted']} ({w['confidence']:.1%})"
                      for w in ev["most_confident_errors"]]
    lines += ["", "![curves](curves.png)", "", "![confusion](confusion.png)", ""]
    return "\n".join(lines)
