"""report.html: the Run view of `transferlab serve` as one self-contained file (page, data and
images inlined), which opens from disk with no server and no network."""
from __future__ import annotations

import base64
import json
from importlib.resources import files
from pathlib import Path

from ..core.io import atomic_write_text
from .view import run_view, thumbnail_jpeg

REPORT_FILE = "report.html"


def static_text(name: str) -> str:
    """One of the page's files (index.html, app.js, style.css): package data of this layer, which
    report.html inlines and `transferlab serve` (a higher layer) serves."""
    return files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def render_report(data: dict) -> str:
    """The page with its stylesheet, script and the run's data inlined."""
    page = static_text("index.html")
    style = f"<style>\n{static_text('style.css')}\n</style>"
    payload = json.dumps(data, default=str).replace("</", "<\\/")
    code = static_text("app.js").replace("</script", "<\\/script")
    script = f"<script>window.TRANSFERLAB_RUN = {payload};</script>\n<script>\n{code}\n</script>"
    page = page.replace('<link rel="stylesheet" href="static/style.css">', style)
    page = page.replace('<script src="static/runs.js"></script>', "")  # the Runs tab needs a server
    return page.replace('<script src="static/app.js"></script>', script)


def write_html_report(run) -> Path:
    """Write RUN/report.html (images embedded as data URIs) and return its path."""
    run = Path(run)
    data, images = run_view(run)
    uris = []
    for path in images:
        jpeg = thumbnail_jpeg(path)
        uris.append("data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii") if jpeg else None)
    data["image_urls"] = uris
    target = run / REPORT_FILE
    atomic_write_text(target, render_report(data))
    return target
