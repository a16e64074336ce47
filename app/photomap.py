"""The photo map: the photos themselves at their 2-D positions, framed by label, with zoom, pan and region select.

Three parts, no gradio import:

  a) `build_atlas`: sprite sheets of small square thumbnails (THUMB_PX, centre-cropped from the store's
     256 px thumbnails) for a drawn sample of the photos, cached in INDEX_DIR/atlas/<key>/ where the key
     covers the sampled ids and their thumbnails' stats (a changed photo gets a new sheet);
  b) `payload`: one compact JSON object for the browser: ids, positions (uint16 per axis), colour key per
     photo and whether a person gave it (label) or the probe (prediction), the legend, the sheets' URLs and
     each sampled photo's zoom level and slot in them; typed arrays travel as base64 (~12 bytes a photo);
  c) `MAP_JS` / `head_html()`: a <canvas> view drawn into a container by id: wheel zooms round the cursor,
     drag pans, shift-drag draws a box and alt-drag a lasso (or pick Box / Lasso in its toolbar; ctrl/cmd
     adds to the selection), a click opens a photo. Every photo is a dot coloured by its key; the sample is
     drawn as thumbnails with a coloured frame (solid for a label, thin for a prediction), more of them as
     one zooms in (thumbnails of zoom level l appear once a cell of a 16 * 2^l grid is ~36 px on screen).

Selection is computed in the browser on the same quantised positions as `PhotoMap.pos`, so it equals
`select_in_box` / `select_in_polygon` here (the server-side truth, and what tests check). What the browser
sends is a claim: `parse_ids` keeps only ids that are on the map.

Map coordinates: the unit square, x to the right, y DOWN (screen order), both axes stretched to fill it.

Wiring into the page (gradio 6: a <script> inside a gr.HTML value is never executed, so the script goes
into the page's <head>, which gradio 6 takes in `launch(head=...)` (Blocks(head=...) only warns), and a
js-only event hands it the data):

    from app import photomap

    with gr.Blocks() as demo:
        gr.HTML(photomap.container_html("photomap"))          # the div the canvas is drawn in
        data = gr.Textbox(visible="hidden", elem_id="photomap-data")       # payload JSON, server -> page
        picked = gr.Textbox(visible="hidden", elem_id="photomap-selection")  # "id,id,..." page -> server
        opened = gr.Textbox(visible="hidden", elem_id="photomap-open")       # "id" of a clicked photo
        draw = gr.Button("Draw the map")

        draw.click(make_payload_json, None, data).then(
            None, data, None, js="(d) => { window.byolPhotoMap.load('photomap', d); }")
        picked.change(on_selection, picked, [...])  # ids = photomap.parse_ids(text, current_map)
        opened.change(on_open, opened, [...])       # photomap.parse_open(text, map): index.preview.preview
    demo.launch(..., head=photomap.head_html())

`visible="hidden"` keeps the textboxes in the page (so the script can find `#<elem_id> textarea`) without
showing them; the script sets the value and dispatches a bubbling `input` event, which gradio 6.31 turns
into the component's `.change` event (not `.input`: checked in a browser, tests/test_photomap.py). The same
selection twice is one change (nothing to do then); a click writes "id:n" with a click counter n, so the
same photo clicked again is a change too: `parse_open` reads it. `load(containerId, data, opts)` takes the payload as a JSON
string or object; opts may rename the boxes: {selectionId, openId, height}. `byolPhotoMap.setSelection(
containerId, ids)` highlights ids chosen by the server (e.g. `[]` after labelling them);
`byolPhotoMap.recolour(containerId, colours_json(...))` repaints the map shown with new colour keys (after
labels or predictions changed), and ignores colours made for another layout.
The sheets are served from INDEX_DIR/atlas/: add that folder to launch's allowed_paths (app/files.py serves
only thumbs/ today), or pass `sheet_url=data_url` to inline them in the payload.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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
_Q = 65535  # positions travel as uint16: 1/65535 of the map, far below a pixel at any zoom used


# ---------------------------------------------------------------- the layout
@dataclass
class PhotoMap:
    """Ids at positions in the unit square (x right, y down), with the zoom level of each sampled photo."""

    ids: np.ndarray  # n int64
    pos: np.ndarray  # n, 2 float64 in [0, 1]: exactly the browser's positions (uint16 / 65535)
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
    return cast(np.ndarray, np.round(t * _Q) / _Q)  # float64, as the browser divides


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
    """What the browser wrote ("12,13,99" or a JSON list) -> ids, in order, once each; only ids on the
    map when `layout` is given (the browser's word is a claim)."""
    text = (text or "").strip().strip("[]")
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
            st = os.stat(store.thumbnail_path(i))
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
            sheet.paste(_square_thumb(store.thumbnail_path(i), cell) or grey, ((j % per_row) * cell, (j // per_row) * cell))

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
    gone, keep = {int(i) for i in gone}, None if keep is None else {int(i) for i in keep}
    removed = 0
    for folder in (Path(index_dir) / ATLAS_DIR).glob("*/atlas.json"):
        try:
            ids = json.loads(folder.read_text()).get("ids")
        except (OSError, ValueError, AttributeError):
            ids = None
        if not isinstance(ids, list) or not gone.isdisjoint(ids) or (keep is not None and not keep.issuperset(ids)):
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
        "pos": _b64(np.round(pm.pos * _Q), "<u2"),  # x0, y0, x1, y1, ...
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
    return (f'<div id="{container_id}" class="byol-photomap" style="width:100%;min-height:{int(height)}px">'
            '<div style="padding:1em;color:#888">Draw the map to see the photos.</div></div>')


def head_html() -> str:
    """The <script> for gradio 6's launch(head=...)."""
    return f"<script>\n{MAP_JS}\n</script>"


MAP_JS = r"""
(() => {
  if (window.byolPhotoMap) return;
  const MIN_CELL = 36, MAX_THUMB = 96, DOT = 2;
  const decode = (s, T) => {
    const bin = atob(s), u = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) u[i] = bin.charCodeAt(i);
    return new T(u.buffer);
  };
  const setBox = (elemId, text) => {
    const host = document.getElementById(elemId);
    const el = host && (host.querySelector('textarea') || host.querySelector('input'));
    if (!el) { console.warn('byolPhotoMap: no textbox #' + elemId); return; }
    el.value = text;
    el.dispatchEvent(new Event('input', {bubbles: true}));
  };
  const inPoly = (poly, x, y) => {  // even-odd rule, as app/photomap.select_in_polygon
    let inside = false;
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      const xi = poly[i][0], yi = poly[i][1], xj = poly[j][0], yj = poly[j][1];
      if ((yi > y) !== (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  };

  class View {
    constructor(root, opts) {
      this.root = root;
      this.opts = Object.assign({selectionId: 'photomap-selection', openId: 'photomap-open', height: 640}, opts || {});
      root.innerHTML = '';
      const bar = document.createElement('div');
      bar.style.cssText = 'display:flex;gap:6px;align-items:center;flex-wrap:wrap;font-size:13px;margin-bottom:4px';
      this.mode = 'pan';
      const button = (label, fn) => {
        const b = document.createElement('button');
        b.type = 'button'; b.textContent = label;
        b.style.cssText = 'padding:2px 8px;border:1px solid #bbb;border-radius:4px;background:#fff;cursor:pointer';
        b.onclick = fn; bar.appendChild(b); return b;
      };
      this.modeButtons = {};
      for (const [m, label] of [['pan', 'Pan'], ['box', 'Box select'], ['lasso', 'Lasso']])
        this.modeButtons[m] = button(label, () => this.setMode(m));
      button('Reset view', () => { this.fit(); this.redraw(); });
      button('Clear selection', () => this.select(new Set(), true));
      this.status = document.createElement('span');
      this.status.style.cssText = 'color:#555;margin-left:8px';
      bar.appendChild(this.status);
      this.legendEl = document.createElement('span');
      this.legendEl.style.cssText = 'margin-left:auto;display:flex;gap:8px;flex-wrap:wrap';
      bar.appendChild(this.legendEl);
      root.appendChild(bar);
      this.canvas = document.createElement('canvas');
      this.canvas.style.cssText = 'width:100%;height:' + this.opts.height + 'px;display:block;border:1px solid #ddd;' +
        'border-radius:4px;touch-action:none;cursor:grab;background:#fff';
      root.appendChild(this.canvas);
      this.ctx = this.canvas.getContext('2d');
      this.selected = new Set();
      this.drag = null;
      this.clicks = 0;
      this.bind();
      new ResizeObserver(() => this.redraw()).observe(this.canvas);
      this.setMode('pan');
    }

    setMode(m) {
      this.mode = m;
      for (const [k, b] of Object.entries(this.modeButtons)) b.style.background = k === m ? '#e8eefc' : '#fff';
      this.canvas.style.cursor = m === 'pan' ? 'grab' : 'crosshair';
    }

    load(d) {
      this.n = d.n;
      this.ids = decode(d.ids, Int32Array);
      this.pos = decode(d.pos, Uint16Array);
      this.grids = d.grids;
      this.setColours(d);
      this.thumbs = null;
      if (d.thumbs) {
        const t = d.thumbs;
        this.thumbs = {cell: t.cell, perRow: t.per_row, idx: decode(t.idx, Int32Array), slot: decode(t.slot, Int32Array),
                       level: decode(t.level, Uint8Array), sheets: t.sheets.map(url => {
                         const im = new Image(); im.onload = () => this.redraw(); im.src = url; return im; })};
      }
      const keep = new Set(Array.from(this.ids));
      this.selected = new Set([...this.selected].filter(i => keep.has(i)));
      this.fit();
      this.redraw();
    }

    setColours(d) {  // the colour keys, who gave them and the legend (a whole payload, or colours() alone)
      this.layout = d.layout;
      this.key = decode(d.key, Int16Array);
      this.human = decode(d.human, Uint8Array);
      this.legend = d.legend;
      this.byColour = new Map();  // colour index -> point indices (-1: unlabelled, drawn first)
      for (let i = 0; i < this.n; i++) {
        const k = this.key[i];
        if (!this.byColour.has(k)) this.byColour.set(k, []);
        this.byColour.get(k).push(i);
      }
      this.legendEl.innerHTML = '';
      for (const l of this.legend) {
        const s = document.createElement('span');
        s.innerHTML = '<span style="display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:3px;background:' +
          l.colour + '"></span>';
        s.appendChild(document.createTextNode(l.name + ' ' + l.count.toLocaleString()));
        this.legendEl.appendChild(s);
      }
    }

    fit() { this.s = 1; this.ox = 0; this.oy = 0; }
    size() {
      const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
      const pad = 40;
      return {w, h, pad, W: Math.max(w - 2 * pad, 1), H: Math.max(h - 2 * pad, 1)};
    }
    // map (u, v in [0, 1], v down) <-> CSS pixels of the canvas
    toScreen(u, v, z) { return [z.pad + this.ox + u * z.W * this.s, z.pad + this.oy + v * z.H * this.s]; }
    toMap(x, y, z) { return [(x - z.pad - this.ox) / (z.W * this.s), (y - z.pad - this.oy) / (z.H * this.s)]; }

    redraw() {
      if (this.pending) return;
      this.pending = requestAnimationFrame(() => { this.pending = 0; this.paint(); });
    }

    paint() {
      const z = this.size(), ctx = this.ctx, dpr = window.devicePixelRatio || 1;
      if (!z.w || !z.h) return;  // in a hidden tab: the ResizeObserver calls again once shown
      if (this.canvas.width !== Math.round(z.w * dpr) || this.canvas.height !== Math.round(z.h * dpr)) {
        this.canvas.width = Math.round(z.w * dpr); this.canvas.height = Math.round(z.h * dpr);
      }
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, z.w, z.h);
      if (!this.n) return;
      const Q = 65535, sx = z.W * this.s / Q, sy = z.H * this.s / Q, bx = z.pad + this.ox, by = z.pad + this.oy;
      const colour = k => k < 0 ? '#c8c8c8' : this.legend[k].colour;
      // every photo as a dot, unlabelled underneath
      const keys = [...this.byColour.keys()].sort((a, b) => a - b);
      for (const k of keys) {
        ctx.fillStyle = colour(k);
        ctx.beginPath();
        const r = k < 0 ? DOT : DOT + 1;
        for (const i of this.byColour.get(k)) {
          const x = bx + this.pos[2 * i] * sx, y = by + this.pos[2 * i + 1] * sy;
          if (x < -r || y < -r || x > z.w + r || y > z.h + r) continue;
          ctx.rect(x - r, y - r, 2 * r, 2 * r);
        }
        ctx.fill();
      }
      // the sample as thumbnails: the finest level whose grid cell is still MIN_CELL px on screen
      this.drawn = [];
      const t = this.thumbs;
      if (t) {
        const cellPx = g => Math.min(z.W, z.H) * this.s / g;
        let L = 0;
        for (let l = 0; l < this.grids.length; l++) if (cellPx(this.grids[l]) >= MIN_CELL) L = l;
        const side = Math.max(14, Math.min(MAX_THUMB, cellPx(this.grids[L]) * 0.92)), half = side / 2;
        const perSheet = t.perRow * t.perRow;
        for (let j = 0; j < t.idx.length; j++) {
          if (t.level[j] > L) continue;
          const i = t.idx[j], x = bx + this.pos[2 * i] * sx, y = by + this.pos[2 * i + 1] * sy;
          if (x < -half || y < -half || x > z.w + half || y > z.h + half) continue;
          const sheet = t.sheets[Math.floor(t.slot[j] / perSheet)], s = t.slot[j] % perSheet;
          if (!sheet.complete || !sheet.naturalWidth) continue;
          ctx.drawImage(sheet, (s % t.perRow) * t.cell, Math.floor(s / t.perRow) * t.cell, t.cell, t.cell,
                        x - half, y - half, side, side);
          const k = this.key[i];
          if (k >= 0) {
            ctx.strokeStyle = colour(k);
            ctx.lineWidth = this.human[i] ? 4 : 2;
            ctx.globalAlpha = this.human[i] ? 1 : 0.8;
            ctx.strokeRect(x - half, y - half, side, side);
            ctx.globalAlpha = 1;
          }
          if (this.selected.has(this.ids[i])) {
            ctx.strokeStyle = '#111'; ctx.lineWidth = 3;
            ctx.strokeRect(x - half - 3, y - half - 3, side + 6, side + 6);
          }
          this.drawn.push([i, x - half, y - half, side]);
        }
      }
      // selected dots
      if (this.selected.size) {
        ctx.strokeStyle = '#111'; ctx.lineWidth = 1.5; ctx.beginPath();
        for (let i = 0; i < this.n; i++) {
          if (!this.selected.has(this.ids[i])) continue;
          const x = bx + this.pos[2 * i] * sx, y = by + this.pos[2 * i + 1] * sy;
          ctx.rect(x - DOT - 2, y - DOT - 2, 2 * DOT + 4, 2 * DOT + 4);
        }
        ctx.stroke();
      }
      // the region being drawn
      const d = this.drag;
      if (d && (d.kind === 'box' || d.kind === 'lasso')) {
        ctx.setLineDash([5, 4]); ctx.strokeStyle = '#1a56db'; ctx.lineWidth = 1.5;
        ctx.fillStyle = 'rgba(26,86,219,0.08)'; ctx.beginPath();
        if (d.kind === 'box') ctx.rect(d.x0, d.y0, d.x - d.x0, d.y - d.y0);
        else d.path.forEach(([x, y], j) => j ? ctx.lineTo(x, y) : ctx.moveTo(x, y));
        ctx.closePath(); ctx.fill(); ctx.stroke(); ctx.setLineDash([]);
      }
      this.status.textContent = this.n.toLocaleString() + ' photos · ' + this.selected.size.toLocaleString() + ' selected';
    }

    point(e) { const r = this.canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; }

    bind() {
      const c = this.canvas;
      c.addEventListener('wheel', e => {
        e.preventDefault();
        const [x, y] = this.point(e), z = this.size();
        const s = Math.min(400, Math.max(0.5, this.s * Math.exp(-e.deltaY * 0.0015)));
        this.ox = x - z.pad - (x - z.pad - this.ox) * s / this.s;
        this.oy = y - z.pad - (y - z.pad - this.oy) * s / this.s;
        this.s = s; this.redraw();
      }, {passive: false});
      c.addEventListener('pointerdown', e => {
        const [x, y] = this.point(e);
        const kind = e.shiftKey ? 'box' : e.altKey ? 'lasso' : this.mode;
        this.drag = {kind, x0: x, y0: y, x, y, ox: this.ox, oy: this.oy, add: e.ctrlKey || e.metaKey, path: [[x, y]], moved: 0};
        c.setPointerCapture(e.pointerId);
        if (kind === 'pan') c.style.cursor = 'grabbing';
        e.preventDefault();
      });
      c.addEventListener('pointermove', e => {
        const d = this.drag; if (!d) return;
        const [x, y] = this.point(e);
        d.moved = Math.max(d.moved, Math.abs(x - d.x0) + Math.abs(y - d.y0));
        d.x = x; d.y = y;
        if (d.kind === 'pan') { this.ox = d.ox + x - d.x0; this.oy = d.oy + y - d.y0; }
        else if (d.kind === 'lasso') d.path.push([x, y]);
        this.redraw();
      });
      const end = e => {
        const d = this.drag; if (!d) return;
        this.drag = null;
        this.canvas.style.cursor = this.mode === 'pan' ? 'grab' : 'crosshair';
        if (d.moved < 4) { this.click(d.x0, d.y0); this.redraw(); return; }
        if (d.kind === 'box') this.selectBox(d);
        else if (d.kind === 'lasso') this.selectLasso(d);
        this.redraw();
      };
      c.addEventListener('pointerup', end);
      c.addEventListener('pointercancel', () => { this.drag = null; this.redraw(); });
    }

    selectBox(d) {
      const z = this.size(), [u0, v0] = this.toMap(d.x0, d.y0, z), [u1, v1] = this.toMap(d.x, d.y, z);
      const ua = Math.min(u0, u1), ub = Math.max(u0, u1), va = Math.min(v0, v1), vb = Math.max(v0, v1);
      const out = d.add ? new Set(this.selected) : new Set();
      for (let i = 0; i < this.n; i++) {
        const u = this.pos[2 * i] / 65535, v = this.pos[2 * i + 1] / 65535;
        if (u >= ua && u <= ub && v >= va && v <= vb) out.add(this.ids[i]);
      }
      this.select(out, true);
    }

    selectLasso(d) {
      const z = this.size(), poly = d.path.map(([x, y]) => this.toMap(x, y, z));
      if (poly.length < 3) return;
      let ua = Infinity, ub = -Infinity, va = Infinity, vb = -Infinity;
      for (const [u, v] of poly) { ua = Math.min(ua, u); ub = Math.max(ub, u); va = Math.min(va, v); vb = Math.max(vb, v); }
      const out = d.add ? new Set(this.selected) : new Set();
      for (let i = 0; i < this.n; i++) {
        const u = this.pos[2 * i] / 65535, v = this.pos[2 * i + 1] / 65535;
        if (u >= ua && u <= ub && v >= va && v <= vb && inPoly(poly, u, v)) out.add(this.ids[i]);
      }
      this.select(out, true);
    }

    select(ids, send) {
      this.selected = ids;
      this.lastSelection = [...ids];
      if (send) setBox(this.opts.selectionId, this.lastSelection.join(','));
      this.redraw();
    }

    click(x, y) {  // a thumbnail under the pointer (topmost), else the nearest dot within 8 px
      let hit = -1;
      for (let j = (this.drawn || []).length - 1; j >= 0; j--) {
        const [i, x0, y0, s] = this.drawn[j];
        if (x >= x0 && x <= x0 + s && y >= y0 && y <= y0 + s) { hit = i; break; }
      }
      if (hit < 0) {
        const z = this.size(), sx = z.W * this.s / 65535, sy = z.H * this.s / 65535, bx = z.pad + this.ox, by = z.pad + this.oy;
        let best = 64;
        for (let i = 0; i < this.n; i++) {
          const dx = bx + this.pos[2 * i] * sx - x, dy = by + this.pos[2 * i + 1] * sy - y, d2 = dx * dx + dy * dy;
          if (d2 < best) { best = d2; hit = i; }
        }
      }
      // 'id:n': a click on the same photo again is still a change
      if (hit >= 0) setBox(this.opts.openId, this.ids[hit] + ':' + (++this.clicks));
    }
  }

  const views = {};
  window.byolPhotoMap = {
    load(containerId, data, opts) {
      const root = document.getElementById(containerId);
      if (!root || data === null || data === undefined || data === '') return;
      const d = typeof data === 'string' ? JSON.parse(data) : data;
      let v = views[containerId];
      if (!v || !document.body.contains(v.canvas)) v = views[containerId] = new View(root, opts);
      v.load(d);
      return v;
    },
    recolour(containerId, data) {  // new colours for the layout shown (ignored for another layout)
      const v = views[containerId];
      if (!v || data === null || data === undefined || data === '') return false;
      const d = typeof data === 'string' ? JSON.parse(data) : data;
      if (d.layout !== v.layout || d.n !== v.n) return false;
      v.setColours(d);
      v.redraw();
      return true;
    },
    setSelection(containerId, ids) {
      const v = views[containerId];
      if (v) v.select(new Set((ids || []).map(Number)), false);
    },
    view(containerId) { return views[containerId]; },
  };
})();
"""
