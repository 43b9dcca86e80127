"""The page in a real browser: Playwright for Python driving Chromium from the OS packages
(Playwright's own browser download is not used). Upload an image, see the right label; open the Run
view and click a confusion-matrix cell; open /docs; no console error, no request leaving 127.0.0.1."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")

from test_serve import LiveServer, face_photo  # noqa: E402,F401  (fixtures; tests/ is on sys.path)

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """$CHROMIUM, else the OS package's executable on PATH or in /usr/bin."""
    candidates = [os.environ.get("CHROMIUM")] + [shutil.which(n) for n in CHROMIUM_NAMES] + \
                 [f"/usr/bin/{n}" for n in CHROMIUM_NAMES]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium executable found (apt-get install chromium, or set CHROMIUM=/path/to/chrome)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


def watch(page, origin: str):
    """Console errors and page errors, and every request that is not to `origin` (data: and blob: are local)."""
    problems = {"console": [], "outside": []}
    page.on("console", lambda m: problems["console"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems["console"].append(str(e)))
    page.on("response", lambda r: problems["console"].append(f"{r.status} {r.url}") if r.status >= 400 else None)

    def request(r):
        u = urlparse(r.url)
        if u.scheme in ("data", "blob"):
            return
        if u.scheme == "file" and not origin:
            return
        if f"{u.scheme}://{u.netloc}" != origin:
            problems["outside"].append(r.url)

    page.on("request", request)
    return problems


def test_the_page_labels_an_upload_and_shows_the_run(browser, trained_run, digits_folder, face_photo, tmp_path):
    from transferlab.serve import create_app

    app = create_app([trained_run, "blazeface_front"])
    digit = sorted((digits_folder / "digit_2").glob("*.png"))[0]
    with LiveServer(app) as live:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems = watch(page, live.url)
        page.goto(live.url + "/")
        page.wait_for_selector("#model-select option", state="attached")
        assert page.locator("#model-picker").is_visible()  # two models: the picker shows
        page.select_option("#model-select", trained_run.name)

        page.set_input_files("#file-input", str(digit))
        page.wait_for_selector(".card .prediction")
        first = page.locator(".card .prediction .label").first.inner_text()
        assert first == "digit_2"
        page.screenshot(path=str(tmp_path / "try.png"), full_page=True)

        page.click("#tab-run")
        page.wait_for_selector("table.confusion td.cell")
        cell = page.locator('table.confusion td.cell[data-true="2"][data-pred="2"]')
        count = int(cell.inner_text())
        cell.click()
        page.wait_for_selector("#cell-gallery .thumb img")
        thumbs = page.locator("#cell-gallery .thumb img")
        assert thumbs.count() == min(count, 24) and count > 0
        # polled from here: wait_for_function compiles its predicate in the page, which the page's CSP
        # (no 'unsafe-eval') refuses at times
        deadline = time.time() + 30
        while not thumbs.evaluate_all("imgs => imgs.every(i => i.complete && i.naturalWidth > 0)"):
            assert time.time() < deadline, "gallery images did not load"
            page.wait_for_timeout(100)
        assert "true digit_2, predicted digit_2" in page.locator("#cell-title").inner_text()
        assert page.locator("#run-curves svg").count() == 2
        page.screenshot(path=str(tmp_path / "run.png"), full_page=True)

        page.click("#tab-try")
        page.select_option("#model-select", "blazeface_front")
        assert page.locator("#tab-run").is_hidden()  # a registry model has no Run view
        page.set_input_files("#file-input", str(face_photo))
        page.wait_for_selector(".card canvas.detections")
        assert page.locator(".card .faces").inner_text() == "1 face(s)"
        page.wait_for_timeout(300)  # the canvas draws when the image has loaded
        page.screenshot(path=str(tmp_path / "detect.png"), full_page=True)

        page.goto(live.url + "/docs")  # Swagger UI, served by this server too (no CDN)
        page.wait_for_selector(".swagger-ui .opblock")
        assert page.locator(".swagger-ui .opblock").count() >= 5
        page.close()
    assert problems["console"] == []
    assert problems["outside"] == []
    print(f"screenshots: {tmp_path / 'try.png'} {tmp_path / 'run.png'}")


def test_report_html_opens_from_disk_with_no_server(browser, trained_run, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = watch(page, "")
    page.goto(Path(trained_run / "report.html").as_uri())
    page.wait_for_selector("table.confusion td.cell")
    page.locator("table.confusion td.cell").first.click()
    page.wait_for_selector("#cell-gallery-section:not([hidden])")
    assert page.locator("#run-curves svg").count() == 2
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    page.close()
    assert problems["console"] == [] and problems["outside"] == []


def test_report_html_shows_the_decisions_of_an_adaptive_run(browser, digits_folder, tmp_path):
    from transferlab.api import train

    # a fine-tuning trial at lr 1.0 diverges: abandoned, and the head-only model kept
    run = train(digits_folder, strategy="two-stage", epochs=3, head_epochs=2, finetune_trial=1, lr=1.0,
                image_size=48, batch_size=16, augment="none", workers=0, out=tmp_path / "run", progress=False)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = watch(page, "")
    page.goto(Path(run.path / "report.html").as_uri())
    page.wait_for_selector("#run-decisions li")
    items = page.locator("#run-decisions li").all_inner_texts()
    assert any(t.startswith("epoch 3, trial: finetune abandoned") for t in items), items
    assert any(t.startswith("kept: the model of epoch") and "head phase" in t for t in items), items
    page.locator("#run-decisions").screenshot(path=str(tmp_path / "decisions.png"))
    page.close()
    assert problems["console"] == [] and problems["outside"] == []
    print(f"screenshot: {tmp_path / 'decisions.png'}")


def open_report(browser, run: Path, ready: str):
    """A page on RUN/report.html opened from disk, once `ready` is there, and what `watch` collects."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = watch(page, "")
    page.goto(Path(run / "report.html").as_uri())
    page.wait_for_selector(ready)
    return page, problems


LOADED = "imgs => imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"


def poll(page, locator, script: str, what: str, timeout: float = 60) -> None:
    """Poll `script` (a function of the matched elements) until it holds; wait_for_function would compile
    its predicate in the page, which the page's CSP (no 'unsafe-eval') refuses at times."""
    deadline = time.time() + timeout
    while not locator.evaluate_all(script):
        assert time.time() < deadline, what
        page.wait_for_timeout(100)


def _wait_images_loaded(page, selector: str) -> None:
    poll(page, page.locator(selector), LOADED, f"{selector} did not load", timeout=30)


def test_a_multilabel_run_in_the_page_and_its_report(browser, multilabel_run, shape_tables, tmp_path):
    """A multi-label run: an upload shows every label it carries (chips) and the thresholds on the bars;
    the Run view shows mAP, the per-label table, a precision/recall curve per label and the most
    confidently wrong labels with their thumbnails; report.html shows the same from disk."""
    import csv

    from transferlab.api import load
    from transferlab.serve import create_app

    with open(shape_tables[1], newline="") as f:
        rows = list(csv.DictReader(f))
    several = next(shape_tables[1].parent / r["image"] for r in rows if len(r["labels"].split()) >= 2)
    expected = load(multilabel_run).predict([several], backend="torch")[0]["labels"]
    with LiveServer(create_app([multilabel_run])) as live:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems = watch(page, live.url)
        page.goto(live.url + "/")
        page.wait_for_selector("#model-select option", state="attached")
        assert "multi-label classifier, 3 labels" in page.locator("#model-info").inner_text()
        page.set_input_files("#file-input", str(several))
        page.wait_for_selector(".card .prediction")
        chips = page.locator(".card .labels .chip").all_inner_texts()
        assert [c.split()[0] for c in chips] == [g["label"] for g in expected] and len(chips) >= 2
        assert page.locator(".card .prediction .tick").count() == 3  # each label's threshold on its bar
        assert page.locator(".card .prediction.given").count() == len(expected)
        page.screenshot(path=str(tmp_path / "ml-try.png"), full_page=True)

        page.click("#tab-run")
        page.wait_for_selector("table.per-label")
        assert page.locator("#run-eval-summary").inner_text().startswith("mAP ")
        assert page.locator("table.per-label tr").count() == 1 + 3
        assert page.locator("#run-confusion svg polyline.pr-curve").count() == 3
        assert page.locator("#run-confusion-title").inner_text().startswith("Precision / recall per label")
        assert page.locator("#run-errors-title").inner_text() == "Most confidently wrong labels"
        _wait_images_loaded(page, "#run-errors .thumb img")
        captions = [c for c in page.locator("#run-errors .thumb img").evaluate_all("imgs => imgs.map(i => i.alt)")
                    if not c.startswith("heatmap")]  # each error's image (its class-activation maps aside)
        assert captions and all(" missed (score " in c or " given, not in the labels (score " in c for c in captions)
        page.screenshot(path=str(tmp_path / "ml-run.png"), full_page=True)
        page.close()
    assert problems["console"] == [] and problems["outside"] == []

    page, problems = open_report(browser, multilabel_run, "table.per-label")
    assert page.locator("#run-confusion svg polyline.pr-curve").count() == 3
    _wait_images_loaded(page, "#run-errors .thumb img")
    assert "best val mAP" in page.locator("#run-summary").inner_text()
    page.screenshot(path=str(tmp_path / "ml-report.png"), full_page=True)
    page.close()
    assert problems["console"] == [] and problems["outside"] == []
    print(f"screenshots: {tmp_path / 'ml-try.png'} {tmp_path / 'ml-run.png'} {tmp_path / 'ml-report.png'}")


def test_the_page_says_when_test_time_augmentation_is_on(browser, trained_run, tmp_path):
    from transferlab.serve import create_app

    with LiveServer(create_app([trained_run], tta=True)) as live:
        page = browser.new_page(viewport={"width": 1280, "height": 700})
        page.goto(live.url + "/")
        poll(page, page.locator("#model-info"), "els => els.some(el => el.textContent.includes('test-time augmentation on'))",
             "the model line names test-time augmentation")
        page.screenshot(path=str(tmp_path / "tta.png"))
        page.close()
    print(f"screenshot: {tmp_path / 'tta.png'}")
