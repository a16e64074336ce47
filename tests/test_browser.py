"""End to end in a real browser (headless Chromium driven by Playwright): upload a photo, see results, label
two kinds, train, see predictions, and save a screenshot (also to $BYOL_SEARCH_SCREENSHOT when set)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from imagegen import shape_image
from test_search import ColourEmbedder, make_index
from test_ui import on_free_port

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent (Debian: apt-get install chromium; .ci/run installs it)"),
]


@contextlib.contextmanager
def browser_page(url: str, width: int, height: int) -> Iterator[Page]:
    """A page of headless Chromium at `url` (30 s timeouts); the browser closes on leaving."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(30_000)
            page.goto(url)
            yield page
        finally:
            browser.close()


def test_upload_label_train_predict(tmp_path):
    from playwright.sync_api import expect

    from app.ui import SELECT_MODE, build_app, launch

    index_dir, _ = make_index(tmp_path, per_class=8)
    demo = build_app(index_dir, embedder=ColourEmbedder(), page_size=8)
    _, url, _ = on_free_port(launch, demo, index_dir, prevent_thread_lock=True, quiet=True)
    queries = {}
    for cls, seed in (("triangle", 3), ("circle", 4)):
        queries[cls] = tmp_path / f"{cls}-query.png"
        shape_image(cls, np.random.default_rng(seed), (90, 70)).save(queries[cls])
    try:
        with browser_page(url, 1400, 1000) as page:
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
        assert shot.stat().st_size > 10_000
        if os.environ.get("BYOL_SEARCH_SCREENSHOT"):
            Path(os.environ["BYOL_SEARCH_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, os.environ["BYOL_SEARCH_SCREENSHOT"])
        labelled = demo.page.labels.labelled()
        assert sorted(labelled.values()) == ["pointy", "pointy", "round", "round"]
    finally:
        demo.close()


def _save_shot(page, name: str, full_page: bool = False) -> None:
    """A screenshot of the page as it is (the whole page with full_page, else the window), into
    $BYOL_SEARCH_SCREENSHOT_DIR/<name> when set (PNG, 256 colours: small enough to commit)."""
    folder = os.environ.get("BYOL_SEARCH_SCREENSHOT_DIR")
    if not folder:
        return
    from PIL import Image

    Path(folder).mkdir(parents=True, exist_ok=True)
    raw = Path(folder) / f".{name}"
    page.screenshot(path=str(raw), full_page=full_page)
    Image.open(raw).convert("RGB").quantize(256).save(Path(folder) / name, optimize=True)
    raw.unlink()


def test_map_select_number_key_preview_and_duplicate_export(tmp_path):
    import csv

    from playwright.sync_api import expect

    from app import handlers, photomap
    from app.ui import build_app, launch

    index_dir, by_class = make_index(tmp_path, per_class=8, duplicates=2)
    demo = build_app(index_dir, embedder=ColourEmbedder(), page_size=8)
    demo.page.labels.create("boxy")  # label 1 (the vocabulary is in name order)
    demo.page.labels.create("round")  # label 2
    drop = next(m for g in handlers.duplicates(demo.page, 0.95).groups for m in g.members if m.decision == "drop")
    # a similar photo starts undecided (no choice made), and can be decided like any other
    open_ = next(m for g in handlers.duplicates(demo.page, "similar photos").groups for m in g.members
                 if m.decision == "undecided")
    # the photo facts are read in the background from launch: held after the first batch until `facts_done`
    facts_done = threading.Event()
    demo.page.give_way = lambda stop=None, **kw: facts_done.wait(60)
    _, url, _ = on_free_port(launch, demo, index_dir, prevent_thread_lock=True, quiet=True)
    try:
        with browser_page(url, 1280, 900) as page:
            expect(page.get_by_text("photos indexed")).to_be_visible()
            expect(page.locator("#label-key-1")).to_contain_text("1 boxy")
            # the progress line of the photo facts, then nothing once they are all read
            expect(page.locator("#facts-status")).to_contain_text("reading photo facts: 100%")
            facts_done.set()
            expect(page.locator("#facts-status")).not_to_contain_text("reading photo facts", timeout=10_000)
            assert demo.page.infos.count() == demo.page.store.count

            # Search: random photos, then a click opens the preview (the default click mode)
            page.get_by_role("button", name="Random photos").click()
            results = page.locator("#results button.thumbnail-item")
            expect(results).to_have_count(8)
            results.nth(0).click()
            expect(page.locator("#preview-facts")).to_contain_text("pixels")
            expect(page.locator("#preview-facts")).to_contain_text("file date")
            src = page.locator("#preview-image img").get_attribute("src")
            assert "/previews/" in src, src
            expect(page.locator("#preview-neighbours button.thumbnail-item")).to_have_count(8)
            _save_shot(page, "page-search.png")
            page.locator("#preview-close").click()

            # Map: draw, shift-drag a box: the page's selection is exactly the photos in the box
            page.get_by_role("tab", name="Map").click()
            page.locator("#draw-map").click()
            page.wait_for_function("window.byolPhotoMap && window.byolPhotoMap.view('photomap') "
                                   "&& window.byolPhotoMap.view('photomap').n > 0")
            page.wait_for_function("window.byolPhotoMap.view('photomap').drawn.length > 0")
            box = page.locator("#photomap canvas").bounding_box()
            x0, y0 = box["x"] + 20, box["y"] + 20
            x1, y1 = box["x"] + box["width"] * 0.5, box["y"] + box["height"] - 20
            page.keyboard.down("Shift")
            page.mouse.move(x0, y0)
            page.mouse.down()
            page.mouse.move(x1, y1, steps=6)
            page.mouse.up()
            page.keyboard.up("Shift")
            (u0, v0), (u1, v1) = page.evaluate(f"""() => {{ const v = window.byolPhotoMap.view('photomap'),
                z = v.size(); return [v.toMap({x0 - box['x']}, {y0 - box['y']}, z),
                                      v.toMap({x1 - box['x']}, {y1 - box['y']}, z)]; }}""")
            layout = photomap.build_map(demo.page.store, "pca")  # the layout drawn (kept per index generation)
            inside = sorted(photomap.select_in_box(layout, u0, v0, u1, v1).tolist())
            assert inside
            expect(page.locator("#sel-note")).to_have_text(re.compile(rf"^\s*{len(inside)} selected"))
            page.locator("#photomap").scroll_into_view_if_needed()
            _save_shot(page, "page-map.png", full_page=True)  # the whole map, with the selection bar above it

            # a number key labels the selection with label 1, and empties it
            page.locator("#map-note").click()  # focus off any text field
            page.keyboard.press("1")
            expect(page.locator("#sel-note")).to_have_text(re.compile(r"^\s*0 selected"))
            labelled = demo.page.labels.labelled()
            assert sorted(i for i, n in labelled.items() if n == "boxy") == inside
            # ... and the map shown takes their new colour (a person's label) without being drawn again
            page.wait_for_function("""(ids) => { const v = window.byolPhotoMap.view('photomap'), want = new Set(ids);
                let n = 0; for (let i = 0; i < v.n; i++) if (want.has(v.ids[i]) && v.key[i] >= 0 && v.human[i]) n++;
                return n === ids.length && v.legend.some(l => l.name === 'boxy'); }""", arg=inside)

            # a click on a photo of the map opens it
            i, x, y, side = page.evaluate("() => window.byolPhotoMap.view('photomap').drawn.at(-1)")
            page.locator("#photomap canvas").scroll_into_view_if_needed()
            box = page.locator("#photomap canvas").bounding_box()
            page.mouse.click(box["x"] + x + side / 2, box["y"] + y + side / 2)
            expect(page.locator("#preview-facts")).to_contain_text("pixels")
            page.locator("#preview-close").click()

            # Label tab (a second label, given elsewhere, so that the probe has two kinds to tell apart)
            others = [i for i in demo.page.store.all_ids().tolist() if i not in inside][:3]
            demo.page.labels.assign(others, "round")
            page.get_by_role("tab", name="Label").click()
            page.get_by_role("button", name="Train probe and predict all").click()
            expect(page.locator("#train-report")).to_contain_text("Predicted", timeout=60_000)
            page.get_by_role("button", name="Next batch to label").click()
            expect(page.locator("#label-next button.thumbnail-item").first).to_be_visible()
            _save_shot(page, "page-label.png")

            # Duplicates: mark a photo the default drops as keep, export the decisions
            page.get_by_role("tab", name="Duplicates").click()
            page.get_by_role("button", name="Find near-duplicates").click()
            choice = page.locator(f"#dup-{drop.id}")
            expect(choice).to_be_visible()
            # a click on a photo of a group opens its preview (the default click mode)
            page.locator(f"#dup-img-{drop.id} img").click()
            expect(page.locator("#preview-facts")).to_contain_text(drop.info.name)
            expect(page.locator("#preview-image img")).to_have_attribute("src", re.compile("/previews/"))
            page.locator("#preview-close").click()
            choice.get_by_label("keep").check()
            expect(page.locator("#dup-status")).to_contain_text(f"Marked photo {drop.id} keep")
            page.get_by_role("button", name="Export decisions (CSV)").click()
            expect(page.locator("#dup-status")).to_contain_text("no photo was deleted")
            expect(page.locator("#dup-file")).to_be_visible()
            _save_shot(page, "page-duplicates.png")
            page.get_by_role("radio", name="similar photos").check()
            undecided = page.locator(f"#dup-{open_.id}")
            expect(undecided).to_be_visible()
            expect(undecided.get_by_label("keep")).not_to_be_checked()
            expect(undecided.get_by_label("drop")).not_to_be_checked()
            undecided.get_by_label("drop").check()
            expect(page.locator("#dup-status")).to_contain_text(f"Marked photo {open_.id} drop")
            assert demo.page.decisions.get(demo.page.store, [open_.id]) == {open_.id: "drop"}
        out = sorted((index_dir / "exports").glob("duplicates-*.csv"))[-1]
        rows = {int(r["id"]): r for r in csv.DictReader(out.open())}
        assert rows[drop.id]["decision"] == "keep" and rows[drop.id]["decided_by"] == "person"
    finally:
        demo.close()
        demo.page.close()


def _shift_drag(page, x0: float, y0: float, x1: float, y1: float) -> None:
    """A box selection on the map: shift held, pointer from (x0, y0) to (x1, y1) in page pixels."""
    page.keyboard.down("Shift")
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=6)
    page.mouse.up()
    page.keyboard.up("Shift")


def test_the_same_box_after_clear_is_the_pages_selection_again(tmp_path):
    """Draw the map, box-select, press the page's "Clear selection", box-select the same photos again:
    the page's selection (and what "Assign to selected" labels) is what the map shows, every time."""
    from playwright.sync_api import expect

    from app import photomap
    from app.ui import build_app, launch

    index_dir, _ = make_index(tmp_path, per_class=8)
    demo = build_app(index_dir, embedder=ColourEmbedder(), page_size=8)
    demo.page.labels.create("boxy")
    _, url, _ = on_free_port(launch, demo, index_dir, prevent_thread_lock=True, quiet=True)
    try:
        with browser_page(url, 1280, 900) as page:
            expect(page.get_by_text("photos indexed")).to_be_visible()
            page.get_by_role("tab", name="Map").click()
            page.locator("#draw-map").click()
            page.wait_for_function("window.byolPhotoMap && window.byolPhotoMap.view('photomap') "
                                   "&& window.byolPhotoMap.view('photomap').n > 0")
            expect(page.locator("#map-note")).not_to_be_empty()
            canvas = page.locator("#photomap canvas")

            def drag_box() -> None:  # the same region of the map each time, wherever the page has moved it
                canvas.scroll_into_view_if_needed()
                box, before = canvas.bounding_box(), None
                while box != before:  # notes and galleries above it may still be growing
                    page.wait_for_timeout(200)
                    box, before = canvas.bounding_box(), box
                _shift_drag(page, box["x"] + 20, box["y"] + 20, box["x"] + box["width"] * 0.6,
                            box["y"] + box["height"] - 20)

            box = canvas.bounding_box()
            (u0, v0), (u1, v1) = page.evaluate(f"""() => {{ const v = window.byolPhotoMap.view('photomap'),
                z = v.size(); return [v.toMap(20, 20, z), v.toMap({box['width'] * 0.6}, {box['height'] - 20}, z)]; }}""")
            inside = sorted(photomap.select_in_box(photomap.build_map(demo.page.store, "pca"), u0, v0, u1, v1).tolist())
            assert inside
            selected = re.compile(rf"^\s*{len(inside)} selected")
            # the page's own button (the map's toolbar has one of the same name)
            clear = page.locator("xpath=//button[normalize-space()='Clear selection']"
                                 "[not(ancestor::*[@id='photomap'])]")
            for _ in range(2):
                drag_box()
                page.wait_for_function(f"window.byolPhotoMap.view('photomap').selected.size === {len(inside)}")
                expect(page.locator("#sel-note")).to_have_text(selected)
                clear.click()
                expect(page.locator("#sel-note")).to_have_text(re.compile(r"^\s*0 selected"))
                page.wait_for_function("window.byolPhotoMap.view('photomap').selected.size === 0")
            drag_box()
            expect(page.locator("#sel-note")).to_have_text(selected)
            label = page.locator("#sel-label input")
            label.fill("boxy")
            label.press("Enter")
            page.get_by_role("button", name="Assign to selected").click()
            expect(page.locator("#sel-note")).to_have_text(re.compile(r"^\s*0 selected"))
        labelled = demo.page.labels.labelled()
        assert sorted(i for i, n in labelled.items() if n == "boxy") == inside
    finally:
        demo.close()
        demo.page.close()
