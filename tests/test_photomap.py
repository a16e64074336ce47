"""app/photomap.py: layout sampling, region selection against brute force, the atlas cache, the payload, and
(with Chromium) the script's box select reaching a Python handler."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_search import make_index

from app import photomap
from app.photomap import (
    ATLAS_DIR,
    PhotoMap,
    build_atlas,
    build_map,
    draw,
    parse_ids,
    payload,
    select_in_box,
    select_in_polygon,
    thumbnail_levels,
    unit_positions,
)
from app.search import EmbeddingMap
from index.store import Store


def random_map(n=5000, seed=0) -> PhotoMap:
    rng = np.random.default_rng(seed)
    xy = np.concatenate([rng.normal(size=(n // 2, 2)), rng.normal(size=(n - n // 2, 2)) * 0.2 + 3])
    pos = unit_positions(xy)
    return PhotoMap(np.arange(100, 100 + n, dtype=np.int64), pos, thumbnail_levels(pos, 600))


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    index_dir, by_class = make_index(tmp_path_factory.mktemp("photomap"), per_class=8)
    store = Store.open(index_dir)
    yield store, by_class
    store.close()


def test_positions_fill_the_unit_square_with_y_down():
    pos = unit_positions(np.array([[0.0, 0.0], [2.0, 1.0], [1.0, 0.5]]))
    assert pos.tolist() == [[0.0, 1.0], [1.0, 0.0], [round(0.5 * 65535) / 65535, round(0.5 * 65535) / 65535]]


def test_thumbnail_sample_is_nested_capped_and_one_per_cell():
    m = random_map()
    lv = m.level
    assert (lv >= 0).sum() == 600
    for level, g in enumerate(photomap.GRIDS):
        chosen = m.pos[(lv >= 0) & (lv <= level)]
        cells = np.minimum((chosen * g).astype(int), g - 1)
        flat = cells[:, 1] * g + cells[:, 0]
        if (lv > level).any():  # a complete level: every occupied cell has exactly one thumbnail
            occupied = np.unique(np.minimum((m.pos * g).astype(int), g - 1) @ np.array([1, g]))
            assert len(np.unique(flat)) == len(flat) == len(occupied)
    assert set(m.sample.tolist()) == set(m.ids[lv >= 0].tolist())
    assert np.all(np.diff(lv[np.isin(m.ids, m.sample)][np.argsort(np.argsort(m.sample))]) >= -10)


def test_box_and_lasso_equal_brute_force():
    m = random_map()
    p = m.pos
    box = select_in_box(m, 0.6, 0.1, 0.2, 0.5)  # corners in any order
    ref = m.ids[(p[:, 0] >= 0.2) & (p[:, 0] <= 0.6) & (p[:, 1] >= 0.1) & (p[:, 1] <= 0.5)]
    assert np.array_equal(np.sort(box), np.sort(ref)) and len(ref) > 0
    tri = [(0.1, 0.1), (0.9, 0.2), (0.3, 0.8)]  # convex: inside = same side of every edge

    def side(a, b):
        return (b[0] - a[0]) * (p[:, 1] - a[1]) - (b[1] - a[1]) * (p[:, 0] - a[0])

    s = [side(tri[i], tri[(i + 1) % 3]) for i in range(3)]
    ref = m.ids[((s[0] > 0) & (s[1] > 0) & (s[2] > 0)) | ((s[0] < 0) & (s[1] < 0) & (s[2] < 0))]
    assert np.array_equal(np.sort(select_in_polygon(m, tri)), np.sort(ref))
    ell = [(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)]  # concave L
    got = set(select_in_polygon(m, ell).tolist())
    ref = set(m.ids[~((p[:, 0] > 0.5) & (p[:, 1] < 0.5))].tolist())
    assert len(got ^ ref) <= 3  # points exactly on an edge may fall either way
    assert len(select_in_polygon(m, [(0, 0), (1, 1)])) == 0
    em = EmbeddingMap(m.ids, np.asarray(m.pos * [1, -1], np.float32), "pca")  # an EmbeddingMap works too
    assert len(select_in_box(em, 0, 0, 1, 1)) == len(m.ids)


def test_parse_ids_keeps_only_ids_on_the_map():
    m = random_map(50)
    assert parse_ids("100, 101,101,x,-5, 9999", m) == [100, 101]
    assert parse_ids("[102,103]") == [102, 103] and parse_ids("") == []
    assert photomap.parse_open("104:7", m) == 104 and photomap.parse_open("5:1", m) is None


def test_atlas_is_cached_by_ids_and_thumbnail_and_pruned(index, tmp_path):
    store, _ = index
    ids = store.all_ids()[:10]
    a = build_atlas(store, ids, cell=16, sheet_side=64)  # 16 per sheet: one sheet here
    assert a.per_row == 4 and len(a.sheets) == 1 and (a.folder / "atlas.json").is_file()
    with Image.open(a.sheets[0]) as sheet:
        with Image.open(store.thumbs.path(int(ids[5]))) as th:
            expect = np.asarray(th.convert("RGB").resize((1, 1), Image.BOX)).reshape(3).astype(int)
        got = np.asarray(sheet.convert("RGB").crop((16, 16, 32, 32)).resize((1, 1), Image.BOX)).reshape(3)
        assert np.abs(got.astype(int) - expect).max() < 40  # slot 5: row 1, column 1
    made = a.sheets[0].stat().st_mtime_ns
    assert build_atlas(store, ids, cell=16, sheet_side=64).key == a.key and a.sheets[0].stat().st_mtime_ns == made
    assert len(build_atlas(store, store.all_ids()[:20], cell=16, sheet_side=64).sheets) == 2
    for k in range(5):
        build_atlas(store, ids[: k + 1], cell=16, sheet_side=64, kept=3)
    assert len(list((store.index_dir / ATLAS_DIR).iterdir())) == 3


def test_payload_round_trips_ids_positions_colours_and_slots(index):
    store, by_class = index
    pm = build_map(store, max_thumbs=10)
    atlas = build_atlas(store, pm.sample)
    labelled = {by_class["circle"][0]: "round"}
    predicted = {i: "round" for i in by_class["circle"]} | {i: "sharp" for i in by_class["square"]}
    d = json.loads(photomap.payload_json(pm, atlas, labelled, predicted))

    def arr(s, t):
        return np.frombuffer(base64.b64decode(s), t)

    ids = arr(d["ids"], "<i4")
    assert d["n"] == len(pm.ids) and np.array_equal(ids, pm.ids)
    assert np.array_equal(arr(d["pos"], "<u2").reshape(-1, 2) / 65535, pm.pos)
    names = [x["name"] for x in d["legend"]]
    assert names == ["round", "sharp", "(none)"] and d["legend"][0]["count"] == len(by_class["circle"])
    key, human = arr(d["key"], "<i2"), arr(d["human"], "u1")
    j = int(np.flatnonzero(ids == by_class["circle"][0])[0])
    assert names[key[j]] == "round" and human[j] == 1 and human.sum() == 1
    assert all(key[ids == i][0] == -1 for i in by_class["triangle"])
    t = d["thumbs"]
    idx, slot = arr(t["idx"], "<i4"), arr(t["slot"], "<i4")
    assert len(idx) == 10 and np.array_equal(ids[idx], atlas.ids[slot])
    assert t["sheets"][0].startswith("/gradio_api/file=") and t["sheets"][0].endswith("sheet_000.jpg")
    inline = payload(pm, atlas, sheet_url=photomap.data_url)
    assert inline["thumbs"]["sheets"][0].startswith("data:image/jpeg;base64,")


def test_layout_is_reused_within_a_generation(index):
    store, _ = index
    assert build_map(store) is build_map(store)
    assert build_map(store, max_points=5) is not build_map(store)


def test_draw_times_each_stage_and_includes_labelled_photos(index):
    store, by_class = index
    pm, text, times = draw(store, labelled={by_class["square"][2]: "box"}, max_points=5)
    assert by_class["square"][2] in pm.ids.tolist() and len(pm.ids) == 5
    assert json.loads(text)["n"] == 5 and times.total_s >= times.layout_s > 0


def test_script_and_container_are_plain_text():
    script = photomap.static_text(photomap.SCRIPT)
    assert photomap.head_html().startswith("<script>") and "window.byolPhotoMap" in script
    assert 'id="photomap"' in photomap.container_html("photomap")
    head = photomap.head_html()
    assert script in head and photomap.static_text(photomap.STYLE) in head and "<style>" in head


def test_every_class_the_map_names_has_a_rule_in_its_stylesheet():
    css = photomap.static_text(photomap.STYLE)
    assert css.count("{") == css.count("}")
    defined = set(re.findall(r"\.(byol-photomap[\w-]*)", css))
    named = set(re.findall(r"['\"](byol-photomap[\w-]*)['\"]", photomap.static_text(photomap.SCRIPT)))
    named |= set(re.findall(r'class="(byol-photomap[\w-]*)"', photomap.container_html()))
    assert named and named <= defined, named - defined
    assert "cssText" not in photomap.static_text(photomap.SCRIPT)  # styles live in the stylesheet


def test_the_quantisation_step_travels_in_the_payload():
    m = random_map(50)
    d = payload(m)
    assert d["q"] == photomap.QUANT
    pos = np.frombuffer(base64.b64decode(d["pos"]), "<u2").reshape(-1, 2) / d["q"]
    assert np.array_equal(pos, m.pos)
    # the script reads it from there: no second copy of the number in the browser's code
    assert str(photomap.QUANT) not in photomap.static_text(photomap.SCRIPT)


def test_numbered_selections_parse_as_their_ids():
    m = random_map(50)
    assert parse_ids("7:100,101", m) == [100, 101] and parse_ids("8:", m) == []
    assert parse_ids("12:[102,103]") == [102, 103]
    assert parse_ids("x:100,101", m) == [101]  # not a number before the colon: "x:100" is junk, as before


# ---------------------------------------------------------------- in a browser
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def map_page(pm: PhotoMap, text: str, height: int = 400):
    """A page with the map alone (payload `text` of the layout `pm`) open in headless Chromium, and what its
    Python handlers heard: got["sel"] (ids of the last selection), got["seq"] (its number), got["open"]."""
    import gradio as gr
    from test_browser import browser_page

    got: dict = {}

    def on_pick(s: str) -> str:
        got["sel"], got["seq"] = parse_ids(s, pm), s.partition(":")[0]
        return f"sel {got['seq']}"

    with gr.Blocks() as demo:
        gr.HTML(photomap.container_html("photomap", height=height))
        data = gr.Textbox(visible="hidden", elem_id="photomap-data")
        picked = gr.Textbox(visible="hidden", elem_id="photomap-selection")
        opened = gr.Textbox(visible="hidden", elem_id="photomap-open")
        echo = gr.Textbox(elem_id="echo")
        go = gr.Button("draw", elem_id="go")
        go.click(lambda: text, None, data).then(None, data, None,
                                                js="(d) => { window.byolPhotoMap.load('photomap', d); }")
        picked.change(on_pick, picked, echo)
        opened.change(lambda s: (got.__setitem__("open", photomap.parse_open(s, pm)), "opened")[1], opened, echo)
    _, url, _ = demo.launch(server_port=_free_port(), prevent_thread_lock=True, quiet=True, ssr_mode=False,
                            head=photomap.head_html())
    try:
        with browser_page(url, 1000, 900) as page:
            page.click("#go")
            page.wait_for_function("window.byolPhotoMap.view('photomap') && window.byolPhotoMap.view('photomap').n > 0")
            yield page, got
    finally:
        demo.close()


def _heard(page, got: dict) -> None:
    """Wait until the server has heard the map's latest selection."""
    seq = page.evaluate("() => window.byolPhotoMap.view('photomap').picks")
    page.wait_for_function(f"document.querySelector('#echo textarea').value === 'sel {seq}'")
    assert got["seq"] == str(seq)


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent")
def test_shift_drag_selects_what_select_in_box_selects_and_click_opens(index):
    store, _ = index
    pm, text, _ = draw(store, sheet_url=photomap.data_url)
    with map_page(pm, text) as (page, got):
        box = page.locator("#photomap canvas").bounding_box()
        x0, y0, x1, y1 = box["x"] + 30, box["y"] + 30, box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.7
        page.keyboard.down("Shift")
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
        page.mouse.move(x1, y1, steps=4)
        page.mouse.up()
        page.keyboard.up("Shift")
        _heard(page, got)
        corners = page.evaluate(f"""() => {{ const v = window.byolPhotoMap.view('photomap'), z = v.size();
            return [v.toMap({x0 - box['x']}, {y0 - box['y']}, z), v.toMap({x1 - box['x']}, {y1 - box['y']}, z)]; }}""")
        (u0, v0), (u1, v1) = corners
        assert sorted(got["sel"]) == sorted(select_in_box(pm, u0, v0, u1, v1).tolist())
        assert got["sel"]
        # the bar is styled by the stylesheet in the head (app/static/photomap.css)
        assert page.evaluate("() => getComputedStyle(document.querySelector('.byol-photomap-bar')).display") == "flex"
        # the centre of the thumbnail drawn last (on top of any it overlaps)
        i, x, y, side = page.evaluate("() => window.byolPhotoMap.view('photomap').drawn.at(-1)")
        j = int(i)
        page.mouse.click(box["x"] + x + side / 2, box["y"] + y + side / 2)
        deadline = time.time() + 20
        while "open" not in got and time.time() < deadline:
            time.sleep(0.1)
        assert got.get("open") == int(pm.ids[j])
        if os.environ.get("BYOL_SEARCH_SCREENSHOT"):
            page.screenshot(path=os.environ["BYOL_SEARCH_SCREENSHOT"])


def _star(rng: np.random.Generator, k: int) -> list[tuple[float, float]]:
    """A random star-shaped polygon of k vertices in the unit square: concave, some edges crossing clusters."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radius = rng.uniform(0.05, 0.5, k)
    centre = rng.uniform(0.3, 0.7, 2)
    return [(float(centre[0] + r * np.cos(a)), float(centre[1] + r * np.sin(a))) for a, r in zip(angles, radius)]


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent")
def test_lasso_selects_what_select_in_polygon_selects():
    pm = random_map(5000, seed=3)
    with map_page(pm, photomap.payload_json(pm), height=500) as (page, got):
        # a lasso drawn with the mouse (alt-drag), round a concave region
        box = page.locator("#photomap canvas").bounding_box()
        path = [(0.15, 0.15), (0.85, 0.2), (0.5, 0.45), (0.8, 0.85), (0.2, 0.8), (0.35, 0.5)]
        page.keyboard.down("Alt")
        page.mouse.move(box["x"] + path[0][0] * box["width"], box["y"] + path[0][1] * box["height"])
        page.mouse.down()
        for fx, fy in path[1:]:
            page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=3)
        page.mouse.up()
        page.keyboard.up("Alt")
        _heard(page, got)
        region = page.evaluate("() => window.byolPhotoMap.view('photomap').region")
        assert region["kind"] == "lasso" and len(region["points"]) >= len(path)
        want = select_in_polygon(pm, [tuple(p) for p in region["points"]])
        assert 0 < len(want) < len(pm.ids)
        assert sorted(got["sel"]) == sorted(want.tolist())
        # random concave polygons given in map coordinates: the same photos, to the last one
        rng = np.random.default_rng(0)
        for k in (3, 5, 9, 17, 40):
            poly = _star(rng, k)
            page.evaluate("(p) => window.byolPhotoMap.view('photomap').selectPolygon(p, false)", poly)
            _heard(page, got)
            want = select_in_polygon(pm, poly)
            assert len(want) > 0 and sorted(got["sel"]) == sorted(want.tolist()), k


def test_stale_atlases_are_removed_and_odd_ones_too(tmp_path):
    """An atlas showing a photo that left the index goes; so does one whose atlas.json is not a list of ids
    (written by something else); one showing only photos still there stays. `keep` may be the index's ids array."""

    def atlas(name: str, ids: object) -> Path:
        d = tmp_path / photomap.ATLAS_DIR / name
        d.mkdir(parents=True)
        (d / "atlas.json").write_text(json.dumps({"ids": ids}))
        return d

    fine, stale = atlas("fine", [1, 2, 3]), atlas("stale", [1, 99])
    odd = [atlas("text", ["x"]), atlas("nested", [[1, 2]]), atlas("huge", [2**70]), atlas("none", None)]
    making = tmp_path / photomap.ATLAS_DIR / "making"
    making.mkdir()  # no atlas.json yet: its maker's
    assert photomap.remove_stale_atlases(tmp_path, keep=np.arange(10, dtype=np.int64)) == 5
    assert fine.is_dir() and making.is_dir() and not stale.exists() and not any(d.exists() for d in odd)
    assert photomap.remove_stale_atlases(tmp_path, gone=[2]) == 1 and not fine.exists()
