"""app/handlers/: what each event of the page does, called directly on a Page (no server, no browser)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image
from test_search import ColourEmbedder, make_index

from app import handlers, photomap
from app.filters import Filter
from app.handlers import OPEN_MODE, SEARCH_MODE, SELECT_MODE, Preview, Results, Selection, selections
from app.labels import Prediction
from app.markup import plain
from app.page import Page

K = 6


@pytest.fixture
def page(tmp_path):
    index_dir, by_class = make_index(tmp_path, per_class=8, duplicates=2)
    p = Page(index_dir, embedder=ColourEmbedder())
    p.by_class = by_class
    yield p
    p.close()
    p.labels.close()
    p.store.close()


def test_captions_are_written_in_one_place():
    pred = Prediction(id=1, label="round", confidence=0.934, margin=0.5)
    assert handlers.caption("a.png") == "a.png"
    assert handlers.caption("a.png", label="round") == "[round] a.png"
    assert handlers.caption("a.png", prediction=pred) == "round? 0.93 · a.png"
    assert handlers.caption("a.png", prediction=pred, guess=False) == "round 0.93 · a.png"
    assert handlers.caption("a.png", label="boxy", prediction=pred) == "[boxy] a.png"  # a label beats a guess


def test_search_from_a_photo_then_show_more(page):
    first = page.by_class["circle"][5]  # not one of the byte copies, which tie with it
    r = handlers.search_id(page, first, K)
    assert isinstance(r, Results) and r.query == {"id": first} and r.gallery.ids[0] == first
    assert len(r.gallery.ids) == len(r.gallery.items) == K and "Photos like" in r.note
    more, note = handlers.show_more(page, r.query, r.gallery.ids, K)
    assert more.ids[:K] == r.gallery.ids and len(more.ids) == 2 * K and note == f"Showing {2 * K} photos"

    rnd = handlers.random_photos(page, K)
    assert rnd.query == {"random": True} and len(rnd.gallery.ids) == K
    more, _ = handlers.show_more(page, rnd.query, rnd.gallery.ids, K)
    assert more.ids[:K] == rnd.gallery.ids and len(set(more.ids)) == len(more.ids) == 2 * K
    with pytest.raises(ValueError, match="search first"):
        handlers.show_more(page, None, [], K)


def test_upload_search_reads_only_stored_uploads(page, tmp_path):
    upload_dir = tmp_path / "uploads"
    upload_dir.mkdir()
    photo = upload_dir / "query.png"
    Image.new("RGB", (40, 30), (250, 10, 10)).save(photo)
    r = handlers.search_upload(page, {"path": str(photo)}, upload_dir, {str(photo)}, K)
    assert r.note == "Photos like your upload" and len(r.query["vec"]) == page.store.dim
    assert handlers.search_upload(page, None, upload_dir, set(), K) is None  # the upload was cleared
    with pytest.raises(ValueError):
        handlers.search_upload(page, {"path": str(photo)}, upload_dir, set(), K)  # not stored by this page
    with pytest.raises(ValueError):
        handlers.search_upload(page, {}, upload_dir, set(), K)


def test_clicks_search_or_select(page):
    shown = handlers.random_photos(page, K).gallery.ids
    r = handlers.click(page, shown, 2, SEARCH_MODE, [], K)
    assert isinstance(r, Results) and r.query == {"id": shown[2]}
    s = handlers.click(page, shown, 2, SELECT_MODE, [], K)
    assert isinstance(s, Selection) and s.gallery.ids == [shown[2]] and s.note.startswith("**1** selected")
    assert handlers.click_select(page, s.gallery.ids, 0, s.gallery.ids).gallery.ids == []  # a second click drops it
    for index in (None, K, -1):
        with pytest.raises(ValueError, match="no longer shown"):
            handlers.click(page, shown, index, SEARCH_MODE, [], K)
    both = handlers.select_all(page, shown, [shown[0]])
    assert both.gallery.ids == shown
    assert handlers.clear_selection(page).note == "**0** selected"


def test_labelling_and_the_probe(page):
    circles, squares = page.by_class["circle"], page.by_class["square"]
    notes: list[str] = []
    v = handlers.create_label(page, "round")
    assert v.names == ["round"] and "| round | 0 | 0 | 0 |" in v.counts
    with pytest.raises(ValueError, match="select photos first"):
        handlers.assign(page, [], "round")
    sel, v = handlers.assign(page, circles[:3], "round", notes.append)
    assert sel.gallery.ids == [] and notes[-1] == "Labelled 3 photo(s) 'round'" and "| round | 3 |" in v.counts
    handlers.assign(page, squares[:3], "boxy")
    shown = handlers.selection(page, [circles[0], squares[5]])
    assert [c for _, c in shown.gallery.items][0].startswith("[round] ")

    report, counts = handlers.train(page)
    assert report.startswith("Probe v1 (logistic regression on the embeddings) trained on boxy: 3, round: 3")
    assert "| boxy | 3 | 0 |" in counts
    captions = [c for _, c in handlers.selection(page, [squares[5]]).gallery.items]
    assert captions[0].startswith("boxy? ") or captions[0].startswith("round? ")  # a prediction, in question
    nxt = handlers.label_next(page, K)
    assert len(nxt.ids) == K and all("? " in c for _, c in nxt.items)
    predicted = handlers.show_labelled(page, "predicted", "round", "most confident first", K)
    assert predicted.ids and all(c.startswith("round 0.") or c.startswith("round 1.") for _, c in predicted.items)
    labelled = handlers.show_labelled(page, "labelled", "round", "most confident first", K)
    assert sorted(labelled.ids) == sorted(circles[:3])

    counts = handlers.accept(page, 0.0, notes.append)
    assert notes[-1].startswith("Accepted ") and "| round | 3 |" in counts
    v = handlers.rename_label(page, "round", "circle")
    assert v.names == ["boxy", "circle"]
    v = handlers.delete_label(page, "boxy", notes.append)
    assert v.names == ["circle"] and "Deleted label 'boxy'" in notes[-1]
    for call in (lambda: handlers.rename_label(page, "", "x"), lambda: handlers.delete_label(page, ""),
                 lambda: handlers.show_labelled(page, "predicted", "", "most", K)):
        with pytest.raises(ValueError, match="pick"):
            call()


def test_unassign_and_accept_selected(page):
    circles, squares = page.by_class["circle"], page.by_class["square"]
    handlers.assign(page, circles[:2], "round")
    handlers.assign(page, squares[:2], "boxy")
    sel, v = handlers.unassign(page, [circles[0]])
    assert sel.gallery.ids == [circles[0]] and "| round | 1 |" in v.counts
    handlers.train(page)
    counts, sel = handlers.accept_selected(page, [circles[5]])
    assert sel.gallery.ids == [] and page.labels.labels_of([circles[5]])[circles[5]][1] == "accepted"
    with pytest.raises(ValueError, match="select photos first"):
        handlers.accept_selected(page, [])


def test_duplicates_decisions_and_their_export(page):
    before = {p: p.stat().st_mtime_ns for p in (page.index_dir.parent / "photos").rglob("*.png")}
    d = handlers.duplicates(page, 0.999)
    assert len(d.groups) == 2 and "2 group(s) at cosine >= 0.999" in d.note
    g = d.groups[0]
    assert g.kind == "identical files" and [m.decision for m in g.members].count("keep") == 1
    assert all(m.info.size and m.info.width == 64 for m in g.members)
    keep = next(m.id for m in g.members if m.decision == "drop")  # overrule the default
    assert handlers.decide(page, keep, "keep") == f"Marked photo {keep} keep"
    note, path = handlers.export_duplicates(page, 0.999, stamp="t1")
    assert path == page.index_dir / "exports" / "duplicates-t1.csv" and "no photo was deleted" in note
    rows = {int(r["id"]): r for r in csv.DictReader(open(path))}
    assert rows[keep]["decision"] == "keep" and rows[keep]["decided_by"] == "person" and len(rows) == 4
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing touched


def test_duplicates_refuse_what_a_browser_never_sends(page, monkeypatch):
    for bad in ("delete", "", None, "keep; DROP TABLE decisions"):
        with pytest.raises(ValueError, match="keep or drop"):
            handlers.decide(page, page.by_class["circle"][0], bad)
    with pytest.raises(ValueError, match="not in the index"):
        handlers.decide(page, 10**9, "drop")
    for bad in (float("nan"), 2.0, -1, 0.1):
        with pytest.raises(ValueError, match="threshold"):
            handlers.duplicates(page, bad)
    monkeypatch.setattr(handlers.review, "review_groups", lambda *a, **k: [])
    with pytest.raises(ValueError, match="nothing to export"):
        handlers.export_duplicates(page, 0.99, stamp="none")
    assert not (page.index_dir / "exports" / "duplicates-none.csv").exists()


def test_exports_write_under_index_dir(page):
    handlers.assign(page, page.by_class["circle"][:2], "round")
    note, path = handlers.export(page, "CSV", False, 0.9, stamp="t1")
    assert path == page.index_dir / "exports" / "labels-t1.csv" and f"to {plain(path)}" in note
    assert len(list(csv.DictReader(open(path)))) == page.store.count
    note, path = handlers.export(page, "ImageFolder (links)", False, 0.9, stamp="t2")
    assert path is None and note.startswith(f"Wrote {plain(page.index_dir / 'exports' / 'imagefolder-links-t2')}"
                                            " (round: 2); it replaces the previous export")
    for bad in ("", "../x", "CSV; rm", None):
        with pytest.raises(ValueError, match="export as one of CSV, ImageFolder"):
            handlers.export(page, bad, False, 0.9, stamp="t3")


def _disk(folder: Path) -> int:
    """Bytes of the files under folder, each hard-linked file once."""
    seen = {(f.stat().st_dev, f.stat().st_ino): f.stat().st_size for f in folder.rglob("*") if f.is_file()
            and not f.is_symlink()}
    return sum(seen.values())


def test_export_clicks_replace_the_previous_export_so_the_disk_stays_bounded(page):
    """Each HF datasets export embeds every labelled photo: clicked again and again, it replaces the last one
    (so do the others), and the exports folder stays the size of one export of each kind."""
    handlers.assign(page, page.by_class["circle"][:4], "round")
    handlers.assign(page, page.by_class["square"][:4], "boxy")
    out = page.index_dir / "exports"
    sizes = []
    for _ in range(3):
        note, _ = handlers.export(page, "HF datasets", False, 0.9, stamp="same")  # same second: numbered
        assert "replaces the previous export" in note
        sizes.append(_disk(out))
    assert [p.name for p in out.iterdir()] in (["hf-dataset-same"], ["hf-dataset-same-2"])
    assert sizes[2] == sizes[0] > 0
    for n in range(3):
        handlers.export(page, "ImageFolder (copies)", False, 0.9, stamp=f"c{n}")
        handlers.export(page, "CSV", False, 0.9, stamp=f"c{n}")
    names = sorted(p.name for p in out.iterdir())
    assert names[1:] == ["imagefolder-copies-c2", "labels-c2.csv"] and names[0].startswith("hf-dataset-same")
    assert len(list((out / "imagefolder-copies-c2").rglob("*.png"))) == 8


def test_a_copying_export_that_would_fill_the_disk_is_refused(page, monkeypatch):
    import shutil as shutil_mod

    from app import exports

    handlers.assign(page, page.by_class["circle"][:4], "round")
    real = shutil_mod.disk_usage
    # as much free as exports leave free, and a few bytes: less than the photos an export copies
    monkeypatch.setattr(exports.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=exports.MIN_FREE + 100))
    for kind in ("HF datasets", "ImageFolder (copies)"):
        with pytest.raises(ValueError, match="not enough disk space: this export copies about"):
            handlers.export(page, kind, False, 0.9, stamp="full")
    assert not (page.index_dir / "exports").exists() or not list((page.index_dir / "exports").iterdir())
    handlers.export(page, "ImageFolder (links)", False, 0.9, stamp="links")  # links copy nothing: allowed


def test_map_draw_select_and_open(page):
    circles, squares = page.by_class["circle"], page.by_class["square"]
    handlers.assign(page, circles[:2], "round")
    m = handlers.draw_map(page, "label", "PCA", sheet_url=photomap.data_url)
    pm = m.layout
    assert len(pm.ids) == page.store.count and "PCA" in m.note
    data = __import__("json").loads(m.data)
    assert data["n"] == page.store.count and data["legend"][0]["name"] == "round" and data["thumbs"]["sheets"]
    # a box over the left half: the page's selection is what select_in_box says, plus what was picked elsewhere
    box = photomap.select_in_box(pm, 0, 0, 0.5, 1).tolist()
    s, on_map = handlers.map_select(page, pm, ",".join(map(str, box)), [squares[0]], [])
    assert on_map == box and s.ids == [squares[0], *[i for i in box if i != squares[0]]]
    # a second box replaces the map's part of the selection, and keeps the rest
    right = photomap.select_in_box(pm, 0.5, 0, 1, 1).tolist()
    s2, on_map2 = handlers.map_select(page, pm, ",".join(map(str, right)), s.ids, on_map)
    assert on_map2 == right and set(s2.ids) == ({squares[0]} | set(right))
    # then a number key labels them (label 1 = "round", the only one)
    sel, v = handlers.label_key(page, 1, "round", s2.ids)
    assert sel.ids == [] and page.labels.labels_of(right)[right[0]][0] == "round"
    # a click on the map, by click mode
    i = int(pm.ids[3])
    p = handlers.map_open(page, pm, f"{i}:1", OPEN_MODE, [], K)
    assert isinstance(p, Preview) and p.id == i
    assert handlers.map_open(page, pm, f"{i}:2", SELECT_MODE, [], K).ids == [i]
    assert handlers.map_open(page, pm, f"{i}:3", SEARCH_MODE, [], K).gallery.ids[0] == i


def test_background_work_gives_way_to_requests(page):
    import threading
    import time

    t = time.monotonic()
    page.give_way(quiet=0.3, longest=1.0)
    assert time.monotonic() - t < 0.1  # no request yet: no wait
    handlers.search_id(page, page.by_class["circle"][0], K)  # a request: the work waits until the page is quiet
    t = time.monotonic()
    page.give_way(quiet=0.3, longest=1.0)
    assert 0.2 <= time.monotonic() - t < 0.9
    handlers.search_id(page, page.by_class["circle"][0], K)
    t = time.monotonic()
    page.give_way(quiet=5.0, longest=0.2)  # never more than `longest`
    assert time.monotonic() - t < 1.0
    stop = threading.Event()
    stop.set()
    t = time.monotonic()
    page.give_way(stop, quiet=5.0, longest=5.0)  # nor once stopped
    assert time.monotonic() - t < 0.5


def test_the_map_prepared_from_launch_is_the_first_draws(page):
    page.labels.assign(page.by_class["square"][:2], "boxy")
    page.start_map().join()  # what launch starts: the default layout and its thumbnail sheets
    sheets = sorted((page.index_dir / photomap.ATLAS_DIR).glob("*/sheet_*.jpg"))
    assert sheets
    stamps = [p.stat().st_mtime_ns for p in sheets]
    pm = photomap.build_map(page.store, "pca", include=sorted(page.labels.labelled()))
    m = handlers.draw_map(page, "label", "PCA")
    assert m.layout is pm  # the layout kept in memory, not made again
    assert [p.stat().st_mtime_ns for p in sheets] == stamps  # nor the sheets
    assert page.start_map() is page.start_map()  # once per page


def _store_a_neighbour_probe(page):
    """A probe as the neighbour classifier stored it (features 'neighbours', from before the probe became plain
    logistic regression): it predicts through the neighbour graph. Its weights are random: any will do."""
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(2, page.store.dim)).astype(np.float32), np.zeros(2, np.float32)
    for name in ("circle", "square"):
        page.labels.create(name)
    page.labels.write(lambda db: db.execute(
        "INSERT INTO probes (at, classes, counts, dim, weight, bias, model_sha256, features) "
        "VALUES (0, ?, '{}', ?, ?, ?, ?, 'neighbours')",
        (json.dumps(["circle", "square"]), page.store.dim, weight.tobytes(), bias.tobytes(),
         page.store.model_sha256)))
    return weight, bias


def _counting_graph_searches(monkeypatch):
    """The list each search of the index for every photo's neighbours appends to."""
    from index import neighbours

    calls = []
    real = neighbours.store_graph

    def counted(store, **kw):
        calls.append(1)
        return real(store, **kw)

    monkeypatch.setattr(neighbours, "store_graph", counted)
    return calls


def test_a_page_whose_probe_is_plain_never_searches_for_neighbours(page, monkeypatch):
    """Training and predicting with a plain probe use the embeddings alone, so what launch starts in the
    background finds no neighbour graph, before a probe exists or after training."""
    calls = _counting_graph_searches(monkeypatch)
    page.start_neighbours().join()  # what launch starts, after the map: no probe yet
    for cls in ("square", "circle"):
        page.labels.assign(page.by_class[cls][:2], cls)
    report, _ = handlers.train(page)
    assert "Predicted" in report
    page._graph_thread = None  # as a new page on the same labels would
    page.start_neighbours().join()
    assert not calls and page.probe._graphs._value is None
    assert page.start_neighbours() is page.start_neighbours()  # once per page


def test_the_neighbours_found_from_launch_are_an_old_neighbour_probes(page, monkeypatch):
    """A labels file whose newest probe averaged over neighbours: launch finds the graph in the background, and
    the probe then predicts through that same graph without searching again."""
    from byol.probe import LinearProbe

    weight, bias = _store_a_neighbour_probe(page)
    calls = _counting_graph_searches(monkeypatch)
    page.start_neighbours().join()  # what launch starts, after the map
    graph = page.probe._graphs.get(page.store)
    assert len(graph[0]) == page.store.count and len(calls) == 1
    assert page.probe.predict(page.store) == page.store.count and len(calls) == 1  # not found again
    ids, nc = graph
    want = nc.predict_proba(LinearProbe(weight, bias)).argmax(1)
    preds = page.labels.predictions(ids)
    assert [preds[int(i)].label for i in ids] == [["circle", "square"][c] for c in want]
    assert page.start_neighbours() is page.start_neighbours()  # once per page


def test_an_index_update_beside_the_page_finds_the_new_neighbours_in_the_background(page, tmp_path):
    from index.store import Store

    _store_a_neighbour_probe(page)  # only a probe that predicts through the graph needs it
    first = page.start_neighbours()
    first.join()
    before = page.probe._graphs.get(page.store)
    with Store.open(page.index_dir, writable=True) as w:
        w.add([{"path": str(tmp_path / "new.png")}], page.store.get_vectors(page.by_class["square"][:1]))
        w.save()
    page._refreshed = 0.0  # past the once-a-second limit
    page.refresh()
    second = page.start_neighbours()
    assert second is not first
    second.join()
    ids, _ = page.probe._graphs._value
    assert len(ids) == page.store.count == len(before[0]) + 1


def test_trainings_fired_at_once_find_the_neighbours_once(page, monkeypatch):
    """A script pressing Train from several connections at once, before any neighbours are found: every call
    answers, and none searches the index for neighbours (the probe is plain logistic regression)."""
    from concurrent.futures import ThreadPoolExecutor

    from index import neighbours

    for cls in ("square", "circle"):
        page.labels.assign(page.by_class[cls][:2], cls)
    calls = []
    real = neighbours.store_graph

    def counted(store, **kw):
        calls.append(1)
        return real(store, **kw)

    monkeypatch.setattr(neighbours, "store_graph", counted)
    with ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda _: handlers.train(page)[0], range(4)))
    assert not calls and all("Predicted" in r for r in reports)


def test_a_closing_page_stops_finding_the_neighbours(page, monkeypatch):
    """Between two batches the search stops once the page closes; nothing half-found is kept."""
    from index import neighbours

    seen = []
    real = neighbours.store_graph

    def closing(store, progress, **kw):  # the page closes while the first batch is reported
        def report(f, d):
            seen.append(f)
            page._fill_stop.set()
            progress(f, d)
        return real(store, progress=report, batch=8, **kw)

    monkeypatch.setattr(neighbours, "store_graph", closing)
    _store_a_neighbour_probe(page)  # only a probe that predicts through the graph needs it
    page.start_neighbours().join(timeout=30)
    assert len(seen) == 1 and page.probe._graphs._value is None


def test_map_colours_follow_labels_without_a_new_layout(page):
    import base64
    import json

    import numpy as np

    assert handlers.map_colours(page, None, "label") is None  # no map shown: nothing to send
    pm = handlers.draw_map(page, "label", "PCA", sheet_url=photomap.data_url).layout
    before = json.loads(handlers.map_colours(page, pm, "label"))
    assert set(before) == {"layout", "n", "key", "human", "legend"}  # colours only: no positions, no sheets
    page.labels.create("round")
    circles = page.by_class["circle"][:3]
    handlers.label_key(page, 1, "round", circles)
    d = json.loads(handlers.map_colours(page, pm, "label"))
    assert d["layout"] == before["layout"] == photomap.layout_token(pm) and d["n"] == len(pm.ids)
    key = np.frombuffer(base64.b64decode(d["key"]), "<i2")
    human = np.frombuffer(base64.b64decode(d["human"]), "u1")
    at = {int(i): j for j, i in enumerate(pm.ids.tolist())}
    mine = [at[i] for i in circles]
    assert (key[mine] == 0).all() and (human[mine] == 1).all()
    assert (key == -1).sum() == len(pm.ids) - 3 and human.sum() == 3
    assert d["legend"][0] == {"name": "round", "colour": photomap.legend(["round"])[0][1], "count": 3}


def test_map_refuses_what_a_browser_never_sends(page):
    m = handlers.draw_map(page, "prediction", "UMAP-or-anything", sheet_url=photomap.data_url)
    pm = m.layout
    with pytest.raises(ValueError, match="draw the map first"):
        handlers.map_select(page, None, "1,2", [], [])
    with pytest.raises(ValueError, match="draw the map first"):
        handlers.map_open(page, None, "1:1", OPEN_MODE, [], K)
    s, on_map = handlers.map_select(page, pm, "999999,-5,../../etc/passwd,1e9,,abc", [], [])
    assert on_map == [] and s.ids == []  # nothing that is not on the map gets in
    with pytest.raises(ValueError, match="more photos than one selection holds"):
        handlers.map_select(page, pm, ",".join(["1"] * (handlers.MAX_SELECTION + 10)) + "1" * 300_000, [], [])
    for bad in ("999999:1", "", ":", "../x:1", "-1:1", "1" * 5000):
        with pytest.raises(ValueError, match="not on the map"):
            handlers.map_open(page, pm, bad, OPEN_MODE, [], K)
    with pytest.raises(ValueError, match="more than one selection holds"):
        handlers.selection(page, list(range(handlers.MAX_SELECTION + 1)))


def test_a_large_selection_shows_some_and_counts_all(page, monkeypatch):
    monkeypatch.setattr(selections, "SELECTION_SHOWN", 5)
    ids = [int(i) for i in page.store.all_ids()]
    s = handlers.selection(page, [*ids, 10**9, ids[0]])  # one not in the index, one twice
    assert s.ids == ids and len(s.gallery.ids) == 5 and s.gallery.ids == ids[:5]
    assert s.note.startswith(f"**{len(ids)}** selected (showing 5)")


def test_label_keys(page):
    circles = page.by_class["circle"]
    with pytest.raises(ValueError, match="there is no label 1"):
        handlers.label_key(page, 1, "a-first", circles[:1])
    handlers.create_label(page, "b-second")
    v = handlers.create_label(page, "a-first")
    assert handlers.key_labels(v)[:3] == ["1 a-first", "2 b-second", None]
    assert [handlers.key_name(n, t) for n, t in enumerate(handlers.key_labels(v)[:3], 1)] == ["a-first", "b-second",
                                                                                               None]
    sel, _ = handlers.label_key(page, 2, "b-second", circles[:2])
    assert sel.ids == [] and {n for n, _ in page.labels.labels_of(circles[:2]).values()} == {"b-second"}
    for bad in (0, 10, -1, "x", None, "1; drop", 1e12):
        with pytest.raises(ValueError, match="label keys are 1 to 9"):
            handlers.label_key(page, bad, "a-first", circles[:1])
    with pytest.raises(ValueError, match="select photos first"):
        handlers.label_key(page, 1, "a-first", [])
    assert handlers.next_batch(page, K) is None  # no predictions yet: nothing to refresh
    handlers.assign(page, page.by_class["square"][:2], "a-first")
    handlers.train(page)
    batch = handlers.next_batch(page, K)
    assert batch is not None and len(batch.ids) == K
    handlers.label_key(page, 1, "a-first", batch.ids[:2])
    assert not set(batch.ids[:2]) & set(handlers.next_batch(page, K).ids)  # the queue moved on


def test_a_number_key_labels_with_the_name_it_showed_or_not_at_all(page):
    """Key 1 showed "1 cats"; another tab then made "aardvark", which sorts first. The key's request carries
    "cats": it is refused, nothing is labelled, and the keys are shown again."""
    circles = page.by_class["circle"]
    v = handlers.create_label(page, "cats")
    shown = handlers.key_labels(v)[0]
    assert shown == "1 cats"
    page.labels.create("aardvark")  # another tab, another user
    with pytest.raises(handlers.KeyMismatch, match="key 1 showed 'cats', but label 1 is 'aardvark' now"):
        handlers.label_key(page, 1, handlers.key_name(1, shown), circles[:2])
    assert page.labels.labelled() == {}
    # what a script sends: the number with a wrong name, or none
    for name in ("dogs", "cats", "Aardvark", None, "", "   ", 7, ["aardvark"]):
        with pytest.raises(ValueError, match="label key 1 needs the name|key 1 showed"):
            handlers.label_key(page, 1, name, circles[:2])
    assert page.labels.labelled() == {}
    sel, _ = handlers.label_key(page, 1, "aardvark ", circles[:2])  # the name key 1 shows now: labels
    assert {n for n, _ in page.labels.labels_of(circles[:2]).values()} == {"aardvark"}
    assert handlers.key_name(1, "2 cats") is None and handlers.key_name(1, None) is None
    assert handlers.key_name(1, "1 1 cats") == "1 cats"  # a label named "1 cats"


def test_preview_shows_facts_and_neighbours_never_the_original(page):
    i = page.by_class["square"][2]
    p = handlers.open_photo(page, i)
    assert p.image.startswith(str(page.index_dir / "previews")) and Image.open(p.image).format == "JPEG"
    assert "**square\\_002\\.png**" in p.facts and "64 × 48 pixels" in p.facts and "folder square" in p.facts
    assert "file date " in p.facts and "(no date taken in the photo)" in p.facts
    assert len(p.neighbours.ids) == handlers.NEIGHBOURS and i not in p.neighbours.ids
    shown = handlers.random_photos(page, K).gallery.ids
    assert handlers.click(page, shown, 0, OPEN_MODE, [], K).id == shown[0]
    # a photo whose original is gone: the thumbnail, and why
    row = page.store.rows([page.by_class["circle"][7]])[0]
    Path(row["path"]).unlink()
    gone = handlers.open_photo(page, row["id"])
    assert gone.image == str(page.store.thumbs.path(row["id"])) and "no such file" in gone.facts


def test_preview_refuses_what_a_browser_never_sends(page):
    for bad in (10**9, -1, "../../etc/passwd", None, "1.5e3x"):
        with pytest.raises(ValueError):
            handlers.open_photo(page, bad)


def test_folder_choices_follow_a_new_version_of_the_index(page, tmp_path):
    import numpy as np

    from index.store import Store

    assert handlers.folders(page) == ["circle", "square", "triangle"]
    some = page.store.rows([page.by_class["circle"][0]])[0]
    with Store.open(page.index_dir, writable=True) as writer:  # `index` run beside the page
        writer.add([{"path": str(Path(some["path"]).parent.parent / "new" / "deeper" / "x.png")}],
                   np.ones((1, page.store.dim), np.float32))
        writer.save()
    page.refresh()
    assert handlers.folders(page) == ["circle", "new", "new/deeper", "square", "triangle"]
    few = handlers.folders(page, limit=2)  # the first two found
    assert len(few) == 2 and set(few) < {"circle", "new", "new/deeper", "square", "triangle"}

def test_search_filters(page, tmp_path):
    squares, circles = page.by_class["square"], page.by_class["circle"]
    page.infos.fill()
    everything = handlers.filter_note(page, Filter())
    assert everything.startswith("No filter") and str(page.store.count) in everything
    assert handlers.folders(page) == ["circle", "square", "triangle"]
    flt = Filter(folder="square")
    assert handlers.filter_note(page, flt).startswith(f"{len(squares)} of {page.store.count} photos")
    r = handlers.search_id(page, circles[0], K, flt)
    assert set(r.gallery.ids) <= set(squares) and len(r.gallery.ids) == K and "pass the filter" in r.note
    assert set(handlers.random_photos(page, K, flt).gallery.ids) <= set(squares)
    more, _ = handlers.show_more(page, r.query, r.gallery.ids, K, flt)
    assert set(more.ids) == set(squares)  # all 8, no more
    handlers.assign(page, circles[:2], "round")
    assert set(handlers.search_id(page, squares[0], K, Filter(label="round")).gallery.ids) == set(circles[:2])
    assert handlers.filter_note(page, Filter(date_from="2000-01-01")).startswith(f"{page.store.count} of")
    assert handlers.filter_note(page, Filter(date_to="2000-01-01")).startswith("0 of")


def test_filters_refuse_what_a_browser_never_sends(page):
    for flt in (Filter(date_from="yesterday"), Filter(date_to="2020-13-45"), Filter(date_from="' OR 1=1 --")):
        with pytest.raises(ValueError, match="not a date"):
            handlers.filter_note(page, flt)
    for folder in ("../..", "square/../../..", "..\\.."):
        with pytest.raises(ValueError, match="without '..'"):
            handlers.search_id(page, page.by_class["square"][0], K, Filter(folder=folder))
    assert handlers.filter_note(page, Filter(folder="/etc")).startswith("0 of")  # not a sub-folder: nothing
    with pytest.raises(ValueError, match="not in the index"):
        handlers.search_id(page, 10**9, K)
    with pytest.raises(ValueError, match="search first"):
        handlers.show_more(page, {"vec": [1.0, 2.0]}, [], K)  # a vector of the wrong size


def test_photo_facts_fill_in_the_background(page):
    t = page.start_facts()
    t.join(30)
    assert page.facts_status() == "" and page.infos.count() == page.store.count


def test_an_empty_index_is_a_user_mistake(tmp_path):
    from byol.preprocess import Preprocess
    from index.store import Store

    Store.create(tmp_path / "empty", 4, "0" * 64, tmp_path / "e.onnx", Preprocess().to_dict()).close()
    page = Page(tmp_path / "empty", embedder=ColourEmbedder())
    for call in (lambda: handlers.random_photos(page, K), lambda: handlers.duplicates(page, 0.9),
                 lambda: handlers.train(page), lambda: handlers.draw_map(page, "label", "PCA")):
        with pytest.raises(ValueError, match="the index is empty"):
            call()
    assert handlers.header(page).startswith("## byol-search\n**0** photos")
    page.labels.close()


def test_load_picks_up_labels_made_elsewhere(page):
    page.labels.create("made-in-another-tab")
    title, v = handlers.load(page)
    assert title.startswith("## byol-search") and v.names == ["made-in-another-tab"]
    assert Path(page.index_dir).is_dir()


# names a person or a folder on disk may hold: each would render a link, an image or HTML if not escaped
HOSTILE_FOLDER = "[x](javascript:alert(1))"
HOSTILE_FILE = "![t](site.example) <img src=x onerror=alert(1)> www.site.example.png"
HOSTILE_LABEL = "[y](site.example) ![z](t.png)"


def _shows_as_text(md: str, *names: str) -> None:
    """The Markdown renders no link, image or HTML, and shows each name as it is written."""
    import html
    import re

    from markdown_it import MarkdownIt

    out = MarkdownIt("commonmark").enable(["strikethrough", "table"]).render(md)
    assert "<a " not in out and "<img" not in out and "<script" not in out, out
    text = html.unescape(re.sub(r"<[^>]+>", "", out))
    for name in names:
        assert name in text, (name, text)


def test_names_from_disk_and_from_users_reach_the_markdown_as_text(page, tmp_path):
    from index.store import Store

    i = page.by_class["square"][1]
    src = Path(page.store.rows([i])[0]["path"])
    folder = src.parent.parent / HOSTILE_FOLDER
    folder.mkdir()
    dst = folder / HOSTILE_FILE
    src.rename(dst)
    with Store.open(page.store.index_dir, writable=True) as w:
        w.update([i], [{"path": str(dst)}])
        w.save()
    page.store.refresh()
    _shows_as_text(handlers.open_photo(page, i).facts, HOSTILE_FILE, HOSTILE_FOLDER)
    _shows_as_text(handlers.search_id(page, i, K).note, HOSTILE_FILE)
    dst.unlink()  # the original gone: the preview says why, naming nothing raw
    _shows_as_text(handlers.open_photo(page, i).facts, HOSTILE_FILE)

    v = handlers.create_label(page, HOSTILE_LABEL)
    _shows_as_text(v.counts, HOSTILE_LABEL)
    handlers.assign(page, page.by_class["circle"][:2], HOSTILE_LABEL)
    handlers.assign(page, page.by_class["triangle"][:2], "plain")
    report, counts = handlers.train(page)
    _shows_as_text(report, HOSTILE_LABEL)
    _shows_as_text(counts, HOSTILE_LABEL)
    note, _ = handlers.export(page, "ImageFolder (links)", False, 0.9, stamp="t")
    _shows_as_text(note, HOSTILE_LABEL, str(page.index_dir / "exports" / "imagefolder-links-t"))

    # the header names the index folder and the encoder file
    index_dir, _ = make_index(tmp_path / "[z](site.example) <b>", per_class=2)
    other = Page(index_dir, embedder=ColourEmbedder())
    try:
        _shows_as_text(handlers.header(other), str(index_dir))
        note, _ = handlers.export(other, "CSV", False, 0.9, stamp="t")
        _shows_as_text(note, str(index_dir))
    finally:
        other.close()
        other.labels.close()
        other.store.close()
