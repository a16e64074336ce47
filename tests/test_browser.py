"""End to end in a real browser (headless Chromium driven by Playwright): upload a photo, see results, label
two kinds, train, see predictions, and save a screenshot (also to $BYOL_SEARCH_SCREENSHOT when set)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from imagegen import shape_image
from test_search import ColourEmbedder, make_index
from test_ui import on_free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent (Debian: apt-get install chromium; .ci/run installs it)"),
]


def test_upload_label_train_predict(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from app.ui import SELECT_MODE, build_app, launch

    index_dir, _ = make_index(tmp_path, per_class=8)
    demo = build_app(index_dir, embedder=ColourEmbedder(), page_size=8)
    _, url, _ = on_free_port(launch, demo, index_dir, prevent_thread_lock=True, quiet=True)
    queries = {}
    for cls, seed in (("triangle", 3), ("circle", 4)):
        queries[cls] = tmp_path / f"{cls}-query.png"
        shape_image(cls, np.random.default_rng(seed), (90, 70)).save(queries[cls])
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(url)
            expect(page.get_by_text("photos indexed")).to_be_visible()
            results = page.locator("#results button.thumbnail-item")
            page.get_by_label(SELECT_MODE).check()  # clicks now pick photos for labelling

            for cls, label in (("triangle", "pointy"), ("circle", "round")):
                # upload a photo: the results are photos of its kind
                page.locator("input[type=file]").first.set_input_files(str(queries[cls]))
                expect(page.locator("#results .caption-label").first).to_contain_text(f"{cls}_")
                expect(results).to_have_count(8)
                # pick the two best results and give them a label typed into the dropdown
                results.nth(0).click()
                expect(page.get_by_text("1 selected")).to_be_visible()
                results.nth(1).click()
                expect(page.get_by_text("2 selected")).to_be_visible()
                box = page.locator("#sel-label input")
                box.fill(label)
                box.press("Enter")
                page.get_by_role("button", name="Assign to selected").click()
                expect(page.get_by_text("0 selected")).to_be_visible()

            page.get_by_role("tab", name="Label").click()
            page.get_by_role("button", name="Train probe and predict all").click()
            expect(page.locator("#train-report")).to_contain_text("Predicted 24 photos", timeout=60_000)
            box = page.locator("#view-label input")
            box.fill("round")
            box.press("Enter")
            page.get_by_role("button", name="Show", exact=True).click()
            captions = page.locator("#predictions .caption-label")
            expect(captions.first).to_contain_text("round ")
            texts = captions.all_inner_texts()
            assert texts and all(t.startswith("round ") and "circle_" in t for t in texts[:4]), texts

            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert shot.stat().st_size > 10_000
        if os.environ.get("BYOL_SEARCH_SCREENSHOT"):
            Path(os.environ["BYOL_SEARCH_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, os.environ["BYOL_SEARCH_SCREENSHOT"])
        labelled = demo.page.labels.labelled()
        assert sorted(labelled.values()) == ["pointy", "pointy", "round", "round"]
    finally:
        demo.close()
