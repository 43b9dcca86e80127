"""`transferlab serve --runs DIR`: the API's run listing, and the page's Runs tab in a real browser
(Debian Chromium through Playwright, as tests/test_serve_browser.py): every run listed and sortable by
its metric, two runs ticked and both curves drawn, one opened in its Run view; no console error."""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_runs_table import FAST, interrupted_run  # noqa: E402  (tests/ is on sys.path)

from transferlab.api import train  # noqa: E402


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, trained_run, digits_folder):
    """Two finished classifier runs, one interrupted after its first epoch, and a folder that is no run."""
    root = tmp_path_factory.mktemp("served-runs") / "runs"
    shutil.copytree(trained_run, root / "lite0-feature-extract")
    train(digits_folder, model="efficientnet_lite0", strategy="feature-extract", epochs=4, out=root / "lite0-4-epochs",
          progress=False, **{**FAST, "batch_size": 32})
    interrupted_run(digits_folder, root / "stopped", strategy="feature-extract")
    (root / "notes").mkdir()
    return root


def test_the_api_lists_the_runs_and_their_histories(runs_dir):
    from fastapi.testclient import TestClient

    from transferlab.serve import create_app

    with TestClient(create_app([], runs_dir=runs_dir, token="t")) as client:
        assert client.get("/api/runs").status_code == 401
        auth = {"Authorization": "Bearer t"}
        rows = {r["key"]: r for r in client.get("/api/runs", headers=auth).json()}
        assert set(rows) == {"lite0-feature-extract", "lite0-4-epochs", "stopped", "notes"}
        assert "path" not in rows["stopped"] and rows["stopped"]["status"] == "interrupted"
        history = client.get("/api/runs/lite0-4-epochs/history", headers=auth).json()
        assert [h["epoch"] for h in history] == [1, 2, 3, 4]
        assert client.get("/api/runs/stopped/history", headers=auth).json()[0]["epoch"] == 1
        view = client.get("/api/runs/lite0-4-epochs", headers=auth).json()
        assert view["name"] == "lite0-4-epochs" and len(view["history"]) == 4
        stopped = client.get("/api/runs/stopped", headers=auth)
        assert stopped.status_code == 404 and "no model.json" in stopped.json()["error"]
        missing = client.get("/api/runs/..%2F..%2Fetc/history", headers=auth)
        assert missing.status_code == 404
    with TestClient(create_app([])) as client:
        assert client.get("/api/runs").status_code == 404  # no --runs folder


def test_the_runs_tab_in_a_browser(runs_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")  # noqa: F841
    from test_serve import LiveServer
    from test_serve_browser import chromium_path, poll, watch

    from transferlab.serve import create_app

    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium executable found (apt-get install chromium, or set CHROMIUM=/path/to/chrome)")
    from playwright.sync_api import sync_playwright

    app = create_app([], runs_dir=runs_dir)
    with LiveServer(app) as live, sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = b.new_page(viewport={"width": 1280, "height": 900})
        problems = watch(page, live.url)
        page.goto(live.url + "/")
        # no model served: the page opens on the Runs tab
        page.wait_for_selector("#runs-table tr[data-run]")
        assert page.locator("#runs-panel").is_visible() and page.locator("#tab-runs").is_visible()
        keys = page.locator("#runs-table tr[data-run]").evaluate_all("rows => rows.map(r => r.dataset.run)")
        assert set(keys) == {"lite0-feature-extract", "lite0-4-epochs", "stopped", "notes"}

        # sorted by the best metric, highest first (the folder that is no run last); a click reverses it
        page.click("th[data-sort=best]")
        page.click("th[data-sort=best]")
        cells = page.locator("#runs-table td.best").all_inner_texts()
        values = [float(c.split()[1]) for c in cells if c != "-"]
        assert values == sorted(values, reverse=True) and cells[-1] == "-"
        page.click("th[data-sort=best]")
        values_up = [float(c.split()[1]) for c in page.locator("#runs-table td.best").all_inner_texts() if c != "-"]
        assert values_up == sorted(values)

        # tick two runs: both curves are drawn in each chart
        page.check("input[data-run='lite0-feature-extract']")
        page.check("input[data-run='lite0-4-epochs']")
        poll(page, page.locator("#runs-curves svg"),
             "svgs => svgs.length === 2 && svgs.every(s => s.querySelectorAll('polyline').length === 2)",
             "the two runs' curves were not drawn")
        charts = page.locator("#runs-curves svg")
        assert charts.nth(0).locator("text").first.text_content() == "val_acc"
        points = charts.nth(0).locator("polyline").evaluate_all("ls => ls.map(l => l.getAttribute('points').split(' ').length)")
        assert sorted(points) == [3, 4]  # 3 epochs and 4 epochs
        legend = charts.nth(0).locator("text").all_text_contents()
        assert any("lite0-feature-extract" in t for t in legend) and any("lite0-4-epochs" in t for t in legend)
        assert page.locator("input[data-run='notes']").is_disabled()
        shot = tmp_path / "runs-tab.png"  # looked at when the page changes
        page.screenshot(path=str(shot), full_page=True)

        # open a run: its Run view
        page.click("button.open-run[data-run='lite0-4-epochs']")
        page.wait_for_selector("#run-summary dl")
        assert page.locator("#run-panel").is_visible()
        assert "lite0-4-epochs" in page.locator("#run-summary").inner_text()
        page.wait_for_selector("#run-confusion table")
        poll(page, page.locator("#run-errors img"), "imgs => imgs.every(i => i.complete)", "error images did not load")
        page.screenshot(path=str(tmp_path / "run-view.png"), full_page=True)
        assert problems == {"console": [], "outside": []}
        b.close()
    print(f"screenshots: {shot} {tmp_path / 'run-view.png'}")
