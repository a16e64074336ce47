"""The README's pictures of the page (docs/page-*.png), taken from real photos in headless Chromium.

What it does, as a user would:
  1. a photo folder: 100 photos of each of Imagenette's 10 kinds (its val split, extracted once from
     ../shared/datasets/imagenette-224.tar.gz into .cache/imagenette), in sub-folders named by kind, plus a
     "phone backup" folder with two edited copies of them (one resized and re-encoded, one cropped) and a
     burst of three frames a second apart (EXIF times), so that the duplicate review has something to show;
  2. an encoder: the base encoder shipped in the package, as a run from it starts (default), or pretrained
     on the folder from the base for --budget; exported with `byol-search export`;
  3. an index of the folder (`byol-search index`), made afresh on every run (no labels from an earlier run);
  4. the page (`byol-search serve imagenette-index` on a free local port, so its header names that folder),
     driven by Playwright in Chromium (/usr/bin/chromium): a search by an uploaded photo (a train photo, not
     in the folder), a result's preview with its facts, three photos of each kind labelled through the page
     (select, type the label, assign), Train, the least certain photos and one label's predictions, the map
     coloured by prediction with a box selection, and the duplicate review with one decision changed.

Everything is written under .cache/screenshots/ (git-ignored) except the pictures: docs/page-search.png,
page-preview.png, page-label.png, page-map.png, page-duplicates.png (PNG, 1400 px wide, 256 colours,
about 1 MB together).

Time: 2-3 minutes on 2 busy CPU cores (AMD EPYC): export 20 s, index of 1,005 photos 15 s, the page 2 min;
the first run also extracts the archive, and --budget adds the pretraining's budget.

Usage:
    .venv/bin/python scripts/screenshots.py                 # the base encoder; writes docs/page-*.png
    .venv/bin/python scripts/screenshots.py --budget 10m    # pretrain 10 minutes from the base first
    .venv/bin/python scripts/screenshots.py --out /tmp/shots --keep-serving   # look at the page afterwards
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

WORK = ROOT / ".cache" / "screenshots"
INDEX_NAME = "imagenette-index"  # the folder the page's header names
CLI = [sys.executable, "-m", "app.cli"]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTH = 1400  # the pictures' width in pixels
KINDS = {  # Imagenette's folders and the names a person would give them
    "n01440764": "tench", "n02102040": "springer spaniel", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck",
    "n03425413": "gas pump", "n03445777": "golf ball", "n03888257": "parachute",
}
PER_LABEL = 3  # photos labelled per kind, through the page
# the query of the search picture: a train photo of this kind (of the first 12 of each kind, one of the two
# whose first 24 results are most of its kind (23), as a person shows the search at its best: half the
# queries find 8-14 of their kind among 24 with the base encoder at 32 px)
SEARCH_KIND, SEARCH_N = "parachute", 2
SHOWN_LABEL = "parachute"  # whose predictions the label picture shows
SHOWN_ROWS = 3  # rows of predictions in the label picture
SHOWN_GROUPS = 3  # groups in the duplicates picture


# ----------------------------------------------------------------------------------------------------------
# the folder, the encoder, the index
# ----------------------------------------------------------------------------------------------------------
def imagenette() -> Path:
    from bench_pretrain import CACHE, DATASETS, extract_once

    return extract_once(DATASETS / "imagenette-224.tar.gz", CACHE / "imagenette")


def make_folder(data: Path, dest: Path, per_class: int) -> Path:
    """`per_class` photos of each kind from the val split (hard links, sorted by name), the copies and the
    burst; made once per size (a folder of another size is made again)."""
    stamp = dest / ".made"
    if stamp.is_file() and stamp.read_text() == str(per_class):
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    for wnid, name in KINDS.items():
        (dest / name).mkdir(parents=True)
        for src in sorted((data / "val" / wnid).glob("*.JPEG"))[:per_class]:
            os.link(src, dest / name / src.name)
    make_copies(dest, data / "train")
    stamp.write_text(str(per_class))
    return dest


def make_copies(dest: Path, train: Path) -> None:
    """What a real folder holds besides: copies of photos edited on a phone, and a burst (frames of a train
    photo, which is not in the folder itself)."""
    backup = dest / "phone backup"
    backup.mkdir()
    originals = [sorted((dest / name).glob("*.JPEG"))[i] for name, i in (("church", 5), ("springer spaniel", 2))]
    for n, src in enumerate(originals):
        im = Image.open(src).convert("RGB")
        w, h = im.size
        if n % 2 == 0:  # resized to half and saved at a low quality
            im.resize((w // 2, h // 2), Image.Resampling.LANCZOS).save(backup / f"IMG_{4101 + n}.jpg", quality=55)
        else:  # cropped by a tenth on two sides
            im.crop((w // 10, 0, w, h - h // 10)).save(backup / f"IMG_{4101 + n}.jpg", quality=85)
    burst = dest / "burst"
    burst.mkdir()
    src = query_photo(train, "French horn", 4)
    im = Image.open(src).convert("RGB")
    w, h = im.size
    side = int(w * 0.88)
    start = datetime.datetime(2026, 8, 14, 10, 31, 5)
    for f in range(3):  # the same window moving by 4% of the side, one frame a second
        dx = int(w * 0.04 * f)
        frame = im.crop((dx, 0, dx + side, side)).resize((w, h), Image.Resampling.LANCZOS)
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = (start + datetime.timedelta(seconds=f)).strftime("%Y:%m:%d %H:%M:%S")
        frame.save(burst / f"DSC_{410 + f:04d}.jpg", quality=90, exif=exif)


def cli(*args: str, cwd: Path) -> None:
    """One byol-search command, its output passed through; a failure stops the script with its command."""
    cmd = [*CLI, *args]
    print("$ byol-search " + " ".join(args), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if subprocess.run(cmd, cwd=cwd, env=env).returncode != 0:
        raise SystemExit(f"failed: byol-search {' '.join(args)} (in {cwd})")


def make_encoder(photos: Path, budget: str) -> Path:
    """encoder.onnx in WORK: the shipped base as it is (budget 0), or pretrained on the folder for `budget`
    from the base; exported by `byol-search export`, checked against torch on the folder's photos."""
    from bench_quality import untrained_checkpoint

    out = WORK / "encoder.onnx"
    run = WORK / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    if budget == "0":  # the step-0 checkpoint a run from the base starts with
        untrained_checkpoint(run / "checkpoint.pt", "base")
    else:
        cli("pretrain", str(photos), "--out", run.name, "--budget", budget, "--no-progress", cwd=WORK)
    cli("export", f"{run.name}/checkpoint.pt", "-o", out.name, "--check-folder", str(photos), cwd=WORK)
    return out


def make_index(photos: Path, encoder: Path) -> Path:
    index_dir = WORK / INDEX_NAME
    shutil.rmtree(index_dir, ignore_errors=True)  # no labels, decisions or exports from an earlier run
    cli("index", str(photos), "--model", encoder.name, "--out", INDEX_NAME, cwd=WORK)
    return index_dir


# ----------------------------------------------------------------------------------------------------------
# the page
# ----------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(keep: bool) -> Iterator[str]:
    """`byol-search serve imagenette-index` in WORK on a free port, until the page answers; stopped on leaving
    (after Enter with `keep`)."""
    import httpx

    port = free_port()
    print(f"$ byol-search serve {INDEX_NAME} --port {port}", flush=True)
    server = subprocess.Popen([*CLI, "serve", INDEX_NAME, "--port", str(port)], cwd=WORK,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise SystemExit(f"byol-search serve stopped (exit code {server.returncode})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"the page did not answer at {url} within 3 minutes")
            time.sleep(1)
        yield url
        if keep:
            input(f"the page is at {url}; press Enter to stop it ")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextlib.contextmanager
def browser(url: str) -> Iterator[Page]:
    """Chromium at `url`, with a window tall enough that every picture lies in it (galleries load their
    images lazily: only what is in the window is drawn)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page(viewport={"width": WIDTH, "height": 2600})
            page.set_default_timeout(60_000)
            page.goto(url)
            yield page
        finally:
            chromium.close()


def images_loaded(page: Page) -> list[str]:
    """Wait until every image in the window has arrived (or failed); the addresses of those that failed."""
    page.wait_for_function("""() => [...document.images].every(im => {
        const r = im.getBoundingClientRect();
        return r.width === 0 || r.bottom < 0 || r.top > innerHeight || im.complete; })""")
    broken = page.evaluate("""() => [...document.images].filter(im => {
        const r = im.getBoundingClientRect();
        return r.width > 0 && r.bottom >= 0 && r.top <= innerHeight && im.naturalWidth === 0; }).map(im => im.src)""")
    page.wait_for_timeout(300)  # transitions and a last layout pass
    return list(broken)


def save(page: Page, out: Path, name: str, bottom: Locator, top: Locator | None = None,
         above: Locator | None = None) -> list[str]:
    """The page from `top` (default: the page's top, where the header names the index) down to `bottom`, or
    to just above `above` when that is on the page, written as a 256-colour PNG. Returns what the picture
    shows broken (images that did not load), each named."""
    broken = [f"{name}: {src} did not load" for src in images_loaded(page)]
    b = bottom.bounding_box()
    t = top.bounding_box() if top is not None else None
    stop = above.bounding_box() if above is not None and above.count() else None
    assert b is not None, f"{name}: nothing to show"
    y0 = max(0.0, t["y"] - 12) if t is not None else 0.0
    y1 = stop["y"] - 4 if stop is not None else b["y"] + b["height"] + 12
    raw = out / f".{name}"
    page.screenshot(path=str(raw), clip={"x": 0, "y": y0, "width": WIDTH, "height": y1 - y0})
    # 256 colours, the palette refined by k-means (3 passes): skies without the bands of median cut alone, at
    # a quarter of the full-colour PNG's size
    Image.open(raw).convert("RGB").quantize(256, kmeans=3, dither=Image.Dither.FLOYDSTEINBERG).save(
        out / name, optimize=True)
    raw.unlink()
    print(f"wrote {out / name} ({(out / name).stat().st_size / 1e3:.0f} kB)", flush=True)
    for problem in broken:
        print(f"warning: {problem}", flush=True)
    return broken


def query_photo(train: Path, kind: str, n: int = 0) -> Path:
    """A photo of `kind` from Imagenette's train split: not in the folder, as an upload would be."""
    wnid = next(w for w, name in KINDS.items() if name == kind)
    return sorted((train / wnid).glob("*.JPEG"))[n]


def upload(page: Page, photo: Path) -> None:
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Search").click()
    before = page.locator("#results .caption-label").all_inner_texts()
    page.locator("input[type=file]").first.set_input_files(str(photo))
    expect(page.get_by_text("Photos like your upload")).to_be_visible()
    page.wait_for_function("""(before) => {  // the results of this upload, not those of the one before
        const now = [...document.querySelectorAll('#results .caption-label')].map(e => e.innerText);
        return now.length > 0 && now.join('\\n') !== before.join('\\n'); }""", arg=before)


def toggle_selection_bar(page: Page) -> None:
    """Fold or unfold the "Selection and labelling" bar (folded, the search pictures show the search)."""
    page.get_by_text("Selection and labelling", exact=True).click()
    page.wait_for_timeout(500)


def label_through_page(page: Page, kind_of: dict[str, str], train: Path) -> None:
    """Per kind, upload a photo of it, add to the selection the first results a person would see are of that
    kind (the script knows them from their folder), type the kind as a label and assign it."""
    from playwright.sync_api import expect

    from app.handlers import OPEN_MODE, SELECT_MODE

    page.get_by_label(SELECT_MODE).check()
    results = page.locator("#results button.thumbnail-item")
    for kind in KINDS.values():
        upload(page, query_photo(train, kind))
        captions = page.locator("#results .caption-label").all_inner_texts()
        right = [i for i, c in enumerate(captions) if kind_of.get(c.split(" · ")[-1]) == kind][:PER_LABEL]
        if not right:
            print(f"no photo of {kind} among the first results: not labelled")
            continue
        for n, i in enumerate(right, 1):
            results.nth(i).click()
            expect(page.locator("#sel-note")).to_contain_text(f"{n} selected")
        field = page.locator("#sel-label input")
        field.fill(kind)
        field.press("Enter")
        page.get_by_role("button", name="Assign to selected").click()
        expect(page.locator("#sel-note")).to_contain_text("0 selected")
    page.get_by_label(OPEN_MODE).check()


def take_pictures(page: Page, out: Path, train: Path, kind_of: dict[str, str]) -> list[str]:
    """Every picture, in the order a person would meet them; returns what they show broken."""
    from playwright.sync_api import expect

    broken = []
    expect(page.get_by_text("photos indexed")).to_be_visible()
    results = page.locator("#results button.thumbnail-item")
    tabs = page.get_by_role("tablist").first

    # search by an uploaded photo, then open a result: its preview, facts and nearest neighbours
    toggle_selection_bar(page)
    upload(page, query_photo(train, SEARCH_KIND, SEARCH_N))
    broken += save(page, out, "page-search.png", page.locator("#results"))
    results.nth(0).click()
    expect(page.locator("#preview-facts")).to_contain_text("pixels")
    expect(page.locator("#preview-neighbours button.thumbnail-item").first).to_be_visible()
    broken += save(page, out, "page-preview.png", page.locator("#preview"))
    page.locator("#preview-close").click()
    toggle_selection_bar(page)

    label_through_page(page, kind_of, train)

    # train, the photos it is least sure of, and those predicted as one label, most confident first
    page.get_by_role("tab", name="Label").click()
    page.get_by_role("button", name="Train probe and predict all").click()
    expect(page.locator("#train-report")).to_contain_text("Predicted", timeout=300_000)
    page.get_by_role("button", name="Next batch to label").click()
    expect(page.locator("#label-next button.thumbnail-item").first).to_be_visible()
    field = page.locator("#view-label input")
    field.fill(SHOWN_LABEL)
    field.press("Enter")
    page.get_by_role("button", name="Show", exact=True).click()
    expect(page.locator("#predictions .caption-label").first).to_contain_text(SHOWN_LABEL)
    shown = page.locator("#predictions button.thumbnail-item")
    broken += save(page, out, "page-label.png", shown.nth(min(shown.count(), SHOWN_ROWS * 8) - 1), top=tabs)

    # the map coloured by prediction, a box around part of it selected
    page.get_by_role("tab", name="Map").click()
    page.get_by_role("radio", name="prediction").check()
    page.locator("#draw-map").click()
    page.wait_for_function("(() => { const v = window.byolPhotoMap && window.byolPhotoMap.view('photomap'); "
                           "return v && v.n > 0 && (v.drawn || []).length > 0; })()")
    canvas = page.locator("#photomap canvas")
    box = canvas.bounding_box()
    assert box is not None
    page.keyboard.down("Shift")
    page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.15)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.45, steps=8)
    page.mouse.up()
    page.keyboard.up("Shift")
    expect(page.locator("#sel-note")).not_to_contain_text("0 selected")
    broken += save(page, out, "page-map.png", page.locator("#photomap"))
    page.get_by_role("button", name="Clear selection").first.click()

    # the duplicate review: the groups found, one photo the default drops marked keep
    page.get_by_role("tab", name="Duplicates").click()
    page.get_by_role("button", name="Find near-duplicates").click()
    members = page.locator(".dup-member")
    expect(members.first).to_be_visible(timeout=120_000)
    drop = page.locator(".dup-member").filter(has=page.locator("input[value=drop]:checked"))
    if drop.count():
        drop.first.get_by_label("keep").check()
        expect(page.locator("#dup-status")).to_contain_text("keep")
    broken += save(page, out, "page-duplicates.png", members.last, top=tabs,
                   above=page.get_by_text(f"Group {SHOWN_GROUPS + 1} ·").first)
    return broken


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=100, help="photos of each kind in the folder (default 100)")
    ap.add_argument("--budget", default="0",
                    help="pretrain on the folder from the shipped base this long first, e.g. 10m (default 0: the "
                         "base encoder as it is; on 2 busy cores a few minutes are a handful of steps)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="where the pictures go (default docs/)")
    ap.add_argument("--keep-serving", action="store_true", help="leave the page up until Enter at the end")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is absent (Debian: apt-get install chromium)")
    t0 = time.monotonic()
    data = imagenette()
    WORK.mkdir(parents=True, exist_ok=True)
    photos = make_folder(data, WORK / "photos", args.per_class)
    encoder = make_encoder(photos, args.budget)
    make_index(photos, encoder)
    args.out.mkdir(parents=True, exist_ok=True)
    with serving(args.keep_serving) as url, browser(url) as page:
        broken = take_pictures(page, args.out, data / "train", {p.name: p.parent.name for p in photos.rglob("*.JPEG")})
    print(f"done in {time.monotonic() - t0:.0f} s")
    if broken:  # written all the same, but not fit for the README
        print(f"{len(broken)} broken image(s) in the pictures: run again, or mend the page", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
