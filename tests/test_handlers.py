"""app/handlers.py: what each event of the page does, called directly on a Page (no server, no browser)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image
from test_search import ColourEmbedder, make_index

from app import handlers
from app.handlers import SEARCH_MODE, SELECT_MODE, Results, Selection
from app.labels import Prediction
from app.page import Page

K = 6


@pytest.fixture
def page(tmp_path):
    index_dir, by_class = make_index(tmp_path, per_class=8, duplicates=2)
    p = Page(index_dir, embedder=ColourEmbedder())
    p.by_class = by_class
    yield p
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
    assert report.startswith("Probe v1 trained on boxy: 3, round: 3") and "| boxy | 3 | 0 |" in counts
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


def test_duplicates(page):
    g, note = handlers.duplicates(page, 0.999)
    assert g.ids and all(c.startswith("group ") for _, c in g.items) and "group(s) at cosine >= 0.999" in note


def test_exports_write_under_index_dir(page):
    handlers.assign(page, page.by_class["circle"][:2], "round")
    note, path = handlers.export(page, "CSV", False, 0.9, stamp="t1")
    assert path == page.index_dir / "exports" / "labels-t1.csv" and f"to `{path}`" in note
    assert len(list(csv.DictReader(open(path)))) == page.store.count
    note, path = handlers.export(page, "ImageFolder (links)", False, 0.9, stamp="t2")
    assert path is None and note == f"Wrote `{page.index_dir / 'exports' / 'imagefolder-t2'}` (round: 2)"


def test_map_and_its_clicks(page):
    image, legend, m = handlers.draw_map(page, "label", "PCA")
    assert image is not None and "PCA" in legend and len(m.ids) == page.store.count
    for bad in (None, [], [1]):
        with pytest.raises(ValueError, match="no photo there"):
            handlers.map_click(page, m, bad, K)
    with pytest.raises(ValueError, match="draw the map first"):
        handlers.map_click(page, None, [0, 0], K)
    x, y = map(float, m.px[0])
    near = handlers.map_click(page, m, [x, y], K)
    assert near.ids == handlers.search_id(page, m.point_at(x, y), K).gallery.ids and len(near.ids) == K


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
