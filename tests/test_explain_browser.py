"""The heatmaps in a real browser (Chromium from the OS packages, as tests/test_serve_browser.py drives it):
the Try page's toggle shows the class-activation map over an uploaded image and back; the Run view and
report.html show the most confidently wrong images with their heatmaps for the true and the predicted class."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pytorch_grad_cam", reason="pip install 'transferlab[explain]'")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")

from test_explain import wrong_run  # noqa: E402,F401  (fixtures; tests/ is on sys.path)
from test_serve import LiveServer  # noqa: E402
from test_serve_browser import LOADED, browser, poll, watch  # noqa: E402,F401




def test_the_heatmap_toggle_and_the_wrong_gallery(browser, wrong_run, tmp_path):
    from transferlab.serve import create_app

    image = sorted((wrong_run.parent / "data" / "val" / "q1").glob("*.png"))[0]
    with LiveServer(create_app([wrong_run])) as live:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        problems = watch(page, live.url)
        page.goto(live.url + "/")
        page.wait_for_selector("#model-select option", state="attached")
        page.set_input_files("#file-input", str(image))
        page.wait_for_selector(".card .prediction")
        toggle = page.locator(".card .explain-toggle")
        card_img = page.locator(".card img")
        assert toggle.inner_text() == "show heatmap"
        assert card_img.get_attribute("src").startswith("blob:")
        toggle.click()
        poll(page, card_img, "imgs => imgs[0].src.startsWith('data:image/png') && imgs[0].complete", "no heatmap shown")
        top = page.locator(".card .prediction .label").first.inner_text()
        assert toggle.inner_text() == f"show image (heatmap of {top})"
        page.locator(".card").first.screenshot(path=str(tmp_path / "toggle-heatmap.png"))
        toggle.click()  # back to the image, with no second request
        assert card_img.get_attribute("src").startswith("blob:") and toggle.inner_text() == "show heatmap"
        toggle.click()
        assert card_img.get_attribute("src").startswith("data:image/png")

        page.click("#tab-run")
        page.wait_for_selector("#run-errors .error-card")
        cards = page.locator("#run-errors .error-card")
        assert cards.count() > 0
        poll(page, page.locator("#run-errors .error-card img"), LOADED, "gallery images did not load")
        first = cards.first.locator(".thumb > div").all_inner_texts()
        assert len(first) == 3 and "(true)" in first[1] and "(predicted)" in first[2], first
        page.locator("#run-errors").screenshot(path=str(tmp_path / "run-errors.png"))
        page.close()
    assert problems["console"] == [] and problems["outside"] == []

    page = browser.new_page(viewport={"width": 1100, "height": 800})
    problems = watch(page, "")
    page.goto(Path(wrong_run / "report.html").as_uri())
    page.wait_for_selector("#run-errors .error-card")
    poll(page, page.locator("#run-errors .error-card img"), LOADED, "report images did not load")
    assert page.locator("#run-errors .error-card .thumb.heatmap").count() == 2 * page.locator(
        "#run-errors .error-card").count()
    page.locator("#run-errors").screenshot(path=str(tmp_path / "report-errors.png"))
    page.close()
    assert problems["console"] == [] and problems["outside"] == []
    print(f"screenshots: {tmp_path / 'toggle-heatmap.png'} {tmp_path / 'run-errors.png'} "
          f"{tmp_path / 'report-errors.png'}")
