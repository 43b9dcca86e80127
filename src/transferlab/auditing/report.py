"""What an audit writes: audit.html (one self-contained page: a thumbnail gallery per issue kind, duplicate
pairs side by side, given vs suggested label, scores), audit.csv (one row per issue), audit.json, and
the exclude list that `train --exclude` reads."""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from pathlib import Path

from ..core.io import atomic_write_text
from ..runs.view import thumbnail_jpeg

CSV_FIELDS = ["kind", "path", "split", "given", "suggested", "score", "other", "other_split", "cross_split", "copies",
              "cosine", "other_class", "suggested_score", "robust_z", "size", "reason"]
MAX_SHOWN = 60
TOP_UNUSUAL = 20  # issues shown per kind in the page (all of them are in the CSV)
TITLES = {
    "exact_duplicate": ("Exact duplicates", "the same file content twice; across splits it inflates validation"),
    "near_duplicate": ("Near duplicates", "the same photo re-encoded, resized or cropped: near in features or "
                                         "thumbnails, and in pixels as close as copies made of the image itself"),
    "label_issue": ("Likely label errors", "cleanlab's confident learning on out-of-fold probe probabilities; "
                                           "score: the probe's probability of the given class (multi-label: "
                                           "of the given yes/no of the image's most doubtful label)"),
    "outlier": ("Outliers", "far from every class in feature space (kNN distance; lower score = stranger)"),
    "tiny": ("Tiny images", "shorter side in pixels"),
    "unreadable": ("Unreadable files", "skipped by train as well"),
}


def write_audit(result, out) -> dict[str, Path]:
    """Write audit.html, audit.csv and audit.json into `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "audit.html", "csv": out / "audit.csv", "json": out / "audit.json"}
    atomic_write_text(paths["csv"], audit_csv(result))
    atomic_write_text(paths["json"], json.dumps(result.to_dict(), indent=1, default=str))
    atomic_write_text(paths["html"], audit_html(result))
    return paths


def audit_csv(result) -> str:
    """One row per issue."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for issue in result.issues:
        writer.writerow(issue)
    return buf.getvalue()


def write_exclude(result, file) -> Path:
    """The exclude list: a comment line with the reason, then the path (relative to the data folder)."""
    root = Path(result.root).resolve()
    lines = [f"# transferlab audit of {result.root}: files to leave out (train --exclude this file)"]
    for path, why in result.exclude_paths():
        p = Path(path).resolve()
        rel = os.path.relpath(p, root) if p.is_relative_to(root) else str(p)
        lines += [f"# {why}", rel]
    target = Path(file)
    atomic_write_text(target, "\n".join(lines) + "\n")
    return target


class _Thumbs:
    def __init__(self):
        self.cache: dict[str, str] = {}

    def uri(self, path: str) -> str:
        if path not in self.cache:
            jpeg = thumbnail_jpeg(path)
            self.cache[path] = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii") if jpeg else ""
        return self.cache[path]


def _figure(thumbs: _Thumbs, path: str, caption: str) -> str:
    src = thumbs.uri(path)
    img = f'<img src="{src}" alt="">' if src else '<div class="missing">unreadable</div>'
    return (f'<figure title="{html.escape(path)}">{img}<figcaption>{caption}'
            f'<br><small>{html.escape(Path(path).name)}</small></figcaption></figure>')


def _card(thumbs: _Thumbs, issue: dict) -> str:
    kind, e = issue["kind"], html.escape
    if kind.endswith("duplicate"):
        tag = ' <b class="leak">leakage</b>' if issue.get("cross_split") else ""
        first = _figure(thumbs, issue["path"], e(issue["split"]) + " / " + e(issue["given"]))
        second = _figure(thumbs, issue["other"], e(issue["other_split"]) + " / " + e(issue["other_class"]))
        return f'<div class="card pair">{first}{second}<p>pixels differ by {issue["score"]:.1f} (its own copies: {issue.get("copies", 0):.1f}), features {issue["cosine"]:.3f}{tag}</p></div>'
    if kind == "label_issue":
        caption = (f'given <b>{e(issue["given"])}</b> ({issue["score"]:.2f})<br>suggested '
                   f'<b>{e(issue["suggested"])}</b> ({issue["suggested_score"]:.2f})')
    elif kind == "outlier":
        caption = f'{e(issue["given"])}: score {issue["score"]:.3f} ({issue["robust_z"]:+.1f} MAD from typical)'
    elif kind == "tiny":
        caption = f'{e(issue["given"])}: {issue["size"][0]}x{issue["size"][1]} px'
    else:
        caption = e(issue.get("reason", ""))
    return f'<div class="card">{_figure(thumbs, issue["path"], caption)}</div>'


STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h2{margin-top:1.6em}
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;border-radius:6px;padding:6px;background:#fafafa}
.pair{display:flex;gap:6px;align-items:flex-start;flex-wrap:wrap;max-width:300px}.pair p{width:100%;margin:2px 0}
figure{margin:0;width:132px}img{max-width:128px;max-height:128px;display:block}figcaption{font-size:12px}
small{color:#777;word-break:break-all}.leak{color:#b00}.missing{width:128px;height:64px;background:#eee}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"""


def audit_html(result) -> str:
    """The page, images inlined as data URIs (opens from disk, no server, no network)."""
    e, thumbs = html.escape, _Thumbs()
    counts = result.counts()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>audit: {e(result.root)}</title>"
             f"<style>{STYLE}</style></head><body><h1>Dataset audit</h1>",
             f"<pre>{e(result.summary())}</pre>",
             "<h2>Images per label</h2><table><tr><th>label</th>" if result.multilabel
             else "<h2>Images per class</h2><table><tr><th>class</th>"]
    splits = list(result.class_counts)
    parts.append("".join(f"<th>{e(s)}</th>" for s in splits) + "</tr>")
    for c in result.classes:
        parts.append(f"<tr><td>{e(c)}</td>" + "".join(f"<td>{result.class_counts[s].get(c, 0)}</td>" for s in splits)
                     + "</tr>")
    parts.append("</table>")
    for kind, (title, note) in TITLES.items():
        issues = result.of_kind(kind)
        shown = f" (first {MAX_SHOWN} shown; all in audit.csv)" if len(issues) > MAX_SHOWN else ""
        parts.append(f"<h2>{title}: {counts[kind]}</h2><p>{e(note)}{shown}</p><div class='grid'>")
        parts.extend(_card(thumbs, i) for i in issues[:MAX_SHOWN])
        parts.append("</div>")
        if kind == "outlier" and result.top_outliers:
            parts.append(f"<h3>The {TOP_UNUSUAL} most unusual images, flagged or not</h3><div class='grid'>")
            parts.extend(f'<div class="card">{_figure(thumbs, p, e(Path(p).parent.name))}</div>'
                         for p in result.top_outliers[:TOP_UNUSUAL])
            parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
