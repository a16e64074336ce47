"""The photo map: the photos themselves at their 2-D positions, framed by label, with zoom, pan and region select.

Three parts, no gradio import:

  a) `build_atlas`: sprite sheets of small square thumbnails (THUMB_PX, centre-cropped from the store's
     256 px thumbnails) for a drawn sample of the photos, cached in INDEX_DIR/atlas/<key>/ where the key
     covers the sampled ids and their thumbnails' stats (a changed photo gets a new sheet);
  b) `payload`: one compact JSON object for the browser: ids, positions (uint16 per axis), colour key per
     photo and whether a person gave it (label) or the probe (prediction), the legend, the sheets' URLs and
     each sampled photo's zoom level and slot in them; typed arrays travel as base64 (~12 bytes a photo);
  c) the view in the browser, app/static/photomap.js and photomap.css (package data; `head_html()` puts
     them in the page's <head>): a <canvas> drawn into a container by id: wheel zooms round the cursor,
     drag pans, shift-drag draws a box and alt-drag a lasso (or pick Box / Lasso in its toolbar; ctrl/cmd
     adds to the selection), a click opens a photo. Every photo is a dot coloured by its key; the sample is
     drawn as thumbnails with a coloured frame (solid for a label, thin for a prediction), more of them as
     one zooms in (thumbnails of zoom level l appear once a cell of a 16 * 2^l grid is ~36 px on screen).

Selection is computed in the browser on the same quantised positions as `PhotoMap.pos` (QUANT steps per
side, sent in the payload as "q"), with the same tests, so it equals `select_in_box` / `select_in_polygon`
here (the server-side truth; tests/test_photomap.py checks both in Chromium). What the browser sends is a
claim: `parse_ids` keeps only ids that are on the map.

Map coordinates: the unit square, x to the right, y DOWN (screen order), both axes stretched to fill it.

Wiring into the page (gradio 6: a <script> inside a gr.HTML value is never executed, so the script goes
into the page's <head>, which gradio 6 takes in `launch(head=...)` (Blocks(head=...) only warns), and a
js-only event hands it the data):

    from app import photomap

    with gr.Blocks() as demo:
        gr.HTML(photomap.container_html("photomap"))          # the div the canvas is drawn in
        data = gr.Textbox(visible="hidden", elem_id="photomap-data")       # payload JSON, server -> page
        picked = gr.Textbox(visible="hidden", elem_id="photomap-selection")  # "n:id,id,..." page -> server
        opened = gr.Textbox(visible="hidden", elem_id="photomap-open")       # "id:n" of a clicked photo
        draw = gr.Button("Draw the map")

        draw.click(make_payload_json, None, data).then(
            None, data, None, js="(d) => { window.byolPhotoMap.load('photomap', d); }")
        picked.change(on_selection, picked, [...])  # ids = photomap.parse_ids(text, current_map)
        opened.change(on_open, opened, [...])       # photomap.parse_open(text, map): index.preview.preview
    demo.launch(..., head=photomap.head_html())

`visible="hidden"` keeps the textboxes in the page (so the script can find `#<elem_id> textarea`) without
showing them; the script sets the value and dispatches a bubbling `input` event, which gradio 6.31 turns
into the component's `.change` event (not `.input`: checked in a browser, tests/test_photomap.py); the same
value again is no change. So each selection is written "n:id,id,..." with a selection counter n (the
same photos selected again after the page cleared its selection are a change: `parse_ids` reads it), and a
click "id:n" with a click counter n (the same photo clicked again: `parse_open` reads it).
`load(containerId, data, opts)` takes the payload as a JSON string or object; opts may rename the boxes:
{selectionId, openId, height}. `byolPhotoMap.setSelection(containerId, ids)` highlights ids chosen by the
server (e.g. `[]` after labelling them);
`byolPhotoMap.recolour(containerId, colours_json(...))` repaints the map shown with new colour keys (after
labels or predictions changed), and ignores colours made for another layout.
The sheets are served from INDEX_DIR/atlas/: add that folder to launch's allowed_paths (app/files.py serves
only thumbs/ today), or pass `sheet_url=data_url` to inline them in the payload.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import numpy as np

from app.search import GREY, UNLABELLED, EmbeddingMap, compute_map, legend

if TYPE_CHECKING:
    from PIL import Image

    from index.store import Store

THUMB_PX = 64  # side of a thumbnail in the atlas: sharp up to ~64 px on screen, 4 KB of JPEG each
SHEET_SIDE = 2048  # pixels per sheet side (32 x 32 thumbnails): under every browser's canvas/texture limit
MAX_THUMBS = 3000  # thumbnails drawn (the rest are dots): ~3 MB of sheets, ~3 s to make once on 2 cores
GRIDS = (16, 32, 64, 128)  # cells per side of the sampling grid at each zoom level: one thumbnail per cell
ATLAS_DIR = "atlas"
ATLASES_KEPT = 4  # atlas folders kept in INDEX_DIR/atlas (newest first); older ones are removed
QUANT = 65535  # positions travel as uint16 (payload "q"): 1/65535 of the map, far below a pixel at any zoom used
SCRIPT, STYLE = "photomap.js", "photomap.css"  # the view in the browser, in app/static/


# ---------------------------------------------------------------- the layout
@dataclass
class PhotoMap:
    """Ids at positions in the unit square (x right, y down), with the zoom level of each sampled photo."""

    ids: np.ndarray  # n int64
    pos: np.ndarray  # n, 2 float64 in [0, 1]: exactly the browser's positions (uint16 / QUANT)
    level: np.ndarray  # n int8: zoom level from which the photo is drawn as a thumbnail; -1: a dot only
    method: str = "pca"  # the projection ("pca" or "umap")

    @property
    def sample(self) -> np.ndarray:
        """Ids drawn as thumbnails, coarsest level first (the atlas's slot order)."""
        j = np.flatnonzero(self.level >= 0)
        return self.ids[j[np.lexsort((self.ids[j], self.level[j]))]]


def unit_positions(xy: np.ndarray) -> np.ndarray:
    """A projection (n, 2; y up) -> the unit square, y down, quantised to what the browser receives."""
    xy = np.asarray(xy, np.float64)
    lo, hi = xy.min(0), xy.max(0)
    t = (xy - lo) / np.maximum(hi - lo, 1e-12)
    t[:, 1] = 1.0 - t[:, 1]
    return cast(np.ndarray, np.round(t * QUANT) / QUANT)  # float64, as the browser divides


def thumbnail_levels(pos: np.ndarray, max_thumbs: int = MAX_THUMBS, grids: Sequence[int] = GRIDS,
                     seed: int = 0) -> np.ndarray:
    """The zoom level of each photo's thumbnail (-1: none): at level l one photo per occupied cell of a
    grids[l] x grids[l] grid, keeping those of coarser levels, at most max_thumbs in all.

    Photos are picked at random within a cell, so the thumbnails cover the map evenly instead of piling up
    in its dense clusters; the nesting means zooming in only ever adds thumbnails.
    """
    n = len(pos)
    level = np.full(n, -1, np.int8)
    rank = np.random.default_rng(seed).permutation(n)
    chosen = 0
    for lv, g in enumerate(grids):
        if chosen >= max_thumbs:
            break
        c = np.minimum((pos * g).astype(np.int64), g - 1)
        cell = c[:, 1] * g + c[:, 0]
        taken = np.zeros(g * g, bool)
        taken[cell[level >= 0]] = True
        cand = np.flatnonzero(~taken[cell])
        cand = cand[np.argsort(rank[cand], kind="stable")]
        _, first = np.unique(cell[cand], return_index=True)
        new = cand[first]
        new = new[np.argsort(rank[new], kind="stable")][: max_thumbs - chosen]
        level[new] = lv
        chosen += len(new)
    return level


def from_embedding_map(m: EmbeddingMap, max_thumbs: int = MAX_THUMBS, seed: int = 0) -> PhotoMap:
    pos = unit_positions(m.xy)
    return PhotoMap(np.asarray(m.ids, np.int64), pos, thumbnail_levels(pos, max_thumbs, seed=seed), m.method)


_LAYOUTS: dict[tuple[Any, ...], PhotoMap] = {}  # the last few layouts drawn, by index state and arguments
_LAYOUTS_KEPT = 4
_layouts_lock = threading.Lock()


def build_map(store: Store, method: str = "pca", max_points: int = 100_000, include: Sequence[int] = (),
              max_thumbs: int = MAX_THUMBS, seed: int = 0) -> PhotoMap:
    """Lay out up to max_points photos (app.search.compute_map: PCA, or UMAP when installed) and sample
    the thumbnails.

    Layouts are kept in memory per index generation: the vectors of a generation never change, and the
    projection is most of a draw's time (PCA of 100,000 x 256 vectors: ~3-5 s on 2 busy cores).
    """
    include = sorted({int(i) for i in include})
    ids_now = np.asarray(store.all_ids(), np.int64)
    if len(ids_now) <= max_points:
        include = []  # every photo is drawn anyway: labelling one must not cost a new layout
    key = (str(store.index_dir), float(store.created_at), int(store.generation), len(ids_now), method,
           int(max_points), hashlib.sha256(np.asarray(include, np.int64).tobytes()).hexdigest(), int(max_thumbs),
           int(seed))
    with _layouts_lock:
        pm = _LAYOUTS.pop(key, None)
    if pm is None:
        pm = from_embedding_map(compute_map(store, method, max_points, include, seed), max_thumbs, seed)
    with _layouts_lock:
        _LAYOUTS[key] = pm  # newest last
        while len(_LAYOUTS) > _LAYOUTS_KEPT:
            _LAYOUTS.pop(next(iter(_LAYOUTS)))
    return pm


# ---------------------------------------------------------------- selection (the server-side truth)
def _positions(layout: PhotoMap | EmbeddingMap) -> np.ndarray:
    if isinstance(layout, PhotoMap):
        return layout.pos
    return unit_positions(layout.xy)  # an EmbeddingMap


def select_in_box(layout: PhotoMap | EmbeddingMap, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Ids whose map position lies in the box (corners in any order, edges included); map coordinates."""
    p = _positions(layout)
    xa, xb = sorted((x0, x1))
    ya, yb = sorted((y0, y1))
    inside = (p[:, 0] >= xa) & (p[:, 0] <= xb) & (p[:, 1] >= ya) & (p[:, 1] <= yb)
    return np.asarray(layout.ids, np.int64)[inside]


def select_in_polygon(layout: PhotoMap | EmbeddingMap, points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Ids inside a closed polygon (a lasso; even-odd rule, as the browser's), in map coordinates."""
    poly = np.asarray(points, np.float64).reshape(-1, 2)
    ids = np.asarray(layout.ids, np.int64)
    if len(poly) < 3:
        return ids[:0]
    p = _positions(layout).astype(np.float64)
    lo, hi = poly.min(0), poly.max(0)
    cand = np.flatnonzero((p[:, 0] >= lo[0]) & (p[:, 0] <= hi[0]) & (p[:, 1] >= lo[1]) & (p[:, 1] <= hi[1]))
    x, y = p[cand, 0], p[cand, 1]
    inside = np.zeros(len(cand), bool)
    xj, yj = poly[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        for xi, yi in poly:
            crosses = (yi > y) != (yj > y)
            inside ^= crosses & (x < (xj - xi) * (y - yi) / (yj - yi) + xi)
            xj, yj = xi, yi
    return ids[cand[inside]]


def parse_ids(text: str, layout: PhotoMap | EmbeddingMap | None = None, limit: int = 1_000_000) -> list[int]:
    """What the browser wrote ("12,13,99", the map's "n:12,13,99" or a JSON list) -> ids, in order, once
    each; only ids on the map when `layout` is given (the browser's word is a claim).

    The map numbers its selections ("n:"), so that selecting the same photos again is a new value for the
    hidden textbox, and so a change the page hears, whatever the page did with its selection meanwhile."""
    text = (text or "").strip()
    seq, colon, rest = text.partition(":")
    if colon and seq.strip().isdigit():
        text = rest
    text = text.strip().strip("[]")
    out: list[int] = []
    for part in text.replace(";", ",").split(",")[:limit]:
        part = part.strip()
        if part.lstrip("-").isdigit() and len(part) <= 18:  # an id fits int64; longer is junk
            out.append(int(part))
    ids = np.asarray(list(dict.fromkeys(out)), np.int64)
    if layout is not None and len(ids):
        ids = ids[np.isin(ids, np.asarray(layout.ids, np.int64))]
    return cast(list[int], ids.tolist())


def parse_open(text: str, layout: PhotoMap | EmbeddingMap | None = None) -> int | None:
    """The id of a clicked photo from what the browser wrote ("id:n"), or None (on the map when `layout`)."""
    ids = parse_ids((text or "").split(":")[0], layout)
    return ids[0] if ids else None


# ---------------------------------------------------------------- the atlas
@dataclass(frozen=True)
class Atlas:
    """Sprite sheets of square thumbnails: ids[j] sits in sheets[j // per_sheet] at slot j % per_sheet
    (row-major, `cell` px squares, `per_row` to a row)."""

    key: str
    folder: Path
    ids: np.ndarray  # m int64, slot order
    sheets: tuple[Path, ...]
    cell: int
    per_row: int

    @property
    def per_sheet(self) -> int:
        return self.per_row * self.per_row


def _atlas_key(store: Store, ids: np.ndarray, cell: int, side: int) -> str:
    h = hashlib.sha256(f"atlas/1 {cell} {side} {len(ids)}\n".encode())
    h.update(np.ascontiguousarray(ids, np.int64).tobytes())
    stats = np.zeros((len(ids), 2), np.int64)
    for j, i in enumerate(ids.tolist()):  # a changed photo (same id) has a new thumbnail: a new atlas
        try:
            st = os.stat(store.thumbs.path(i))
            stats[j] = st.st_size, st.st_mtime_ns
        except OSError:
            pass
    h.update(stats.tobytes())
    return h.hexdigest()[:24]


def _square_thumb(path: Path, cell: int) -> Image.Image | None:
    """The thumbnail at `path`, centre-cropped to a square and resized to cell x cell; None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path, formats=["JPEG"]) as im:  # our own thumbnails: JPEG only
            im.draft("RGB", (cell, cell))  # libjpeg decodes at 1/2 or 1/4 scale: 256 px -> 64 px
            rgb = im.convert("RGB")
            w, h = rgb.size
            s = min(w, h)
            box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
            return rgb.resize((cell, cell), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)
    except Exception:  # a thumbnail missing (photo failed to decode) or damaged: a grey square instead
        return None


def build_atlas(store: Store, ids: Iterable[int], cell: int = THUMB_PX, sheet_side: int = SHEET_SIDE,
                kept: int = ATLASES_KEPT) -> Atlas:
    """Sprite sheets of the thumbnails of `ids` (in that order), made once and then read from
    INDEX_DIR/atlas/<key>/ (sheet_<k>.jpg, then atlas.json written last: its presence means complete)."""
    from PIL import Image

    from byol.fileio import atomic_write, atomic_write_bytes

    ids = np.asarray(list(ids), np.int64)
    per_row = sheet_side // cell
    key = _atlas_key(store, ids, cell, sheet_side)
    root = Path(store.index_dir) / ATLAS_DIR
    folder = root / key
    n_sheets = max(1, -(-len(ids) // (per_row * per_row)))
    sheets = tuple(folder / f"sheet_{k:03d}.jpg" for k in range(n_sheets))
    if (folder / "atlas.json").is_file() and all(s.is_file() for s in sheets):
        os.utime(folder)  # recently used: kept by the pruning below
        return Atlas(key, folder, ids, sheets, cell, per_row)
    folder.mkdir(parents=True, exist_ok=True)
    grey = Image.new("RGB", (cell, cell), tuple(int(GREY[k:k + 2], 16) for k in (1, 3, 5)))
    per_sheet = per_row * per_row
    for k, path in enumerate(sheets):
        chunk = ids[k * per_sheet:(k + 1) * per_sheet]
        rows = -(-len(chunk) // per_row)
        sheet = Image.new("RGB", (per_row * cell if rows > 1 else max(1, len(chunk)) * cell, max(1, rows) * cell),
                          (255, 255, 255))
        for j, i in enumerate(chunk.tolist()):
            sheet.paste(_square_thumb(store.thumbs.path(i), cell) or grey, ((j % per_row) * cell, (j // per_row) * cell))

        def save(f: BinaryIO, s: Image.Image = sheet) -> None:
            s.save(f, format="JPEG", quality=80)

        atomic_write(path, save, durable=False)
    atomic_write_bytes(folder / "atlas.json", json.dumps({"key": key, "cell": cell, "per_row": per_row,
                                                          "count": len(ids), "sheets": len(sheets),
                                                          "ids": ids.tolist()}), durable=False)
    _prune(root, kept)
    return Atlas(key, folder, ids, sheets, cell, per_row)


def _prune(root: Path, kept: int) -> None:
    """Remove all but the `kept` most recently used atlas folders (only ever under INDEX_DIR/atlas)."""
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in folders[kept:]:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_atlases(index_dir: str | Path, gone: Iterable[int] = (), keep: Iterable[int] | None = None) -> int:
    """Remove the finished atlases that show a photo gone from the index (one of `gone`, or not in `keep`),
    or that do not say which photos they show (made before atlas.json listed them); returns how many. A
    folder still being made (no atlas.json yet) is left to its maker."""
    gone = {int(i) for i in gone}
    kept = None if keep is None else np.asarray(keep if isinstance(keep, np.ndarray) else list(keep), np.int64)
    removed = 0
    for folder in (Path(index_dir) / ATLAS_DIR).glob("*/atlas.json"):
        try:
            ids = json.loads(folder.read_text()).get("ids")
        except (OSError, ValueError, AttributeError):
            ids = None
        try:
            shown = np.asarray(ids, np.int64) if isinstance(ids, list) else None
        except (TypeError, ValueError, OverflowError):  # not a list of ids: an atlas this code did not write
            shown = None
        if shown is None or shown.ndim != 1 or not gone.isdisjoint(shown.tolist()) or \
                (kept is not None and not np.isin(shown, kept).all()):
            shutil.rmtree(folder.parent, ignore_errors=True)
            removed += 1
    return removed


def file_url(path: Path) -> str:
    """gradio's URL of a file it may serve (the folder must be in launch's allowed_paths)."""
    return "/gradio_api/file=" + str(Path(path).absolute())


def data_url(path: Path) -> str:
    """The file inlined as a data: URL (no static path needed; ~1.33x its size in the payload)."""
    return "data:image/jpeg;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


# ---------------------------------------------------------------- the payload
def colour_keys(ids: np.ndarray, labelled: dict[int, str], predicted: dict[int, str] | None = None
                ) -> tuple[list[tuple[str, str, int]], np.ndarray, np.ndarray]:
    """(legend [(name, colour, count)], key index per photo (-1: none), 1 where a person gave the label).

    A person's label wins over a prediction; colours follow app.search.legend (Tableau 10 by name).
    """
    predicted = predicted or {}
    names = [labelled.get(int(i)) or predicted.get(int(i)) or UNLABELLED for i in ids]
    human = np.fromiter((int(i) in labelled for i in ids), np.uint8, len(ids))
    leg = legend(names)
    at = {name: j for j, (name, _, _) in enumerate(leg) if name != UNLABELLED}
    key = np.fromiter((at.get(n, -1) for n in names), np.int16, len(ids))
    return leg, key, human


def _b64(a: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode("ascii")


def layout_token(pm: PhotoMap) -> str:
    """A short name of the layout's photos and their order: colours sent later apply to this layout only."""
    return hashlib.sha256(np.ascontiguousarray(pm.ids, np.int64).tobytes()).hexdigest()[:16]


def colours(pm: PhotoMap, labelled: dict[int, str] | None = None, predicted: dict[int, str] | None = None) -> dict[str, Any]:
    """Only the colours of a drawn map (the colour key per photo, who gave it, the legend), for the
    browser to repaint after labels changed without a new layout or atlas (`byolPhotoMap.recolour`)."""
    leg, key, human = colour_keys(pm.ids, labelled or {}, predicted)
    return {"layout": layout_token(pm), "n": int(len(pm.ids)), "key": _b64(key, "<i2"), "human": _b64(human, "u1"),
            "legend": [{"name": n, "colour": c, "count": k} for n, c, k in leg]}


def colours_json(pm: PhotoMap, labelled: dict[int, str] | None = None,
                 predicted: dict[int, str] | None = None) -> str:
    return json.dumps(colours(pm, labelled, predicted), separators=(",", ":"))


def payload(pm: PhotoMap, atlas: Atlas | None = None, labelled: dict[int, str] | None = None,
            predicted: dict[int, str] | None = None, sheet_url: Callable[[Path], str] = file_url) -> dict[str, Any]:
    """The browser's view of the map (see the module docstring); typed arrays are little-endian base64."""
    out = {
        "version": 1, "method": pm.method, "grids": list(GRIDS),
        "ids": _b64(pm.ids, "<i4"),
        "q": QUANT, "pos": _b64(np.round(pm.pos * QUANT), "<u2"),  # x0, y0, x1, y1, ... (/ q: the map)
        **colours(pm, labelled, predicted),
        "thumbs": None,
    }
    if atlas is not None and len(atlas.ids):
        where = {int(i): j for j, i in enumerate(pm.ids.tolist())}
        slots = [(where[int(i)], s) for s, i in enumerate(atlas.ids.tolist()) if int(i) in where]
        idx = np.array([j for j, _ in slots], np.int64)
        slot = np.array([s for _, s in slots], np.int64)
        lv = np.maximum(pm.level[idx], 0) if len(idx) else idx
        out["thumbs"] = {
            "cell": atlas.cell, "per_row": atlas.per_row, "sheets": [sheet_url(p) for p in atlas.sheets],
            "idx": _b64(idx, "<i4"), "slot": _b64(slot, "<i4"), "level": _b64(lv, "u1"),
        }
    return out


def payload_json(pm: PhotoMap, atlas: Atlas | None = None, labelled: dict[int, str] | None = None,
                 predicted: dict[int, str] | None = None, sheet_url: Callable[[Path], str] = file_url) -> str:
    return json.dumps(payload(pm, atlas, labelled, predicted, sheet_url), separators=(",", ":"))


@dataclass(frozen=True)
class MapTimes:
    layout_s: float
    atlas_s: float
    payload_s: float

    @property
    def total_s(self) -> float:
        return self.layout_s + self.atlas_s + self.payload_s


def draw(store: Store, labelled: dict[int, str] | None = None, predicted: dict[int, str] | None = None,
         method: str = "pca", max_points: int = 100_000, max_thumbs: int = MAX_THUMBS,
         sheet_url: Callable[[Path], str] = file_url, seed: int = 0) -> tuple[PhotoMap, str, MapTimes]:
    """Everything a click on "draw the map" does: layout (labelled photos always included), atlas, payload."""
    t0 = time.perf_counter()
    pm = build_map(store, method, max_points, include=sorted(labelled or {}), max_thumbs=max_thumbs, seed=seed)
    t1 = time.perf_counter()
    atlas = build_atlas(store, pm.sample)
    t2 = time.perf_counter()
    text = payload_json(pm, atlas, labelled, predicted, sheet_url)
    t3 = time.perf_counter()
    return pm, text, MapTimes(t1 - t0, t2 - t1, t3 - t2)


# ---------------------------------------------------------------- the page's side
def container_html(container_id: str = "photomap", height: int = 640) -> str:
    """The element the script draws into (a gr.HTML value); pass the same height to load's opts."""
    return (f'<div id="{html.escape(container_id)}" class="byol-photomap" style="min-height:{int(height)}px">'
            '<div class="byol-photomap-empty">Draw the map to see the photos.</div></div>')


def static_text(name: str) -> str:
    """One of the page's files shipped beside this module (app/static/: package data), as text."""
    return resources.files("app").joinpath("static", name).read_text(encoding="utf-8")


def head_html() -> str:
    """The map's script and style (app/static/photomap.js, photomap.css) for gradio 6's launch(head=...)."""
    return (f"<script>\n{static_text(SCRIPT)}\n</script>\n"
            f"<style>\n{static_text(STYLE)}\n</style>")

