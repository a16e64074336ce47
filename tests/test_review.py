"""app/review.py: duplicate groups with facts and decisions, persisted, exported; no photo is ever touched."""

from __future__ import annotations

import csv
import os

import pytest
from PIL import Image
from test_search import make_index

from app.review import Decisions, Group, Member, default_keep, export_csv, member_markdown, review_groups
from index.photoinfo import PhotoInfo, PhotoInfoCache
from index.store import Store


def info(i, w=10, h=10, size=100, taken="2020-01-01T00:00:00", source="exif"):
    return PhotoInfo(i, f"/p/{i}.jpg", f"{i}.jpg", "", size, 0, w, h, taken, source)


@pytest.fixture
def index(tmp_path):
    index_dir, by_class = make_index(tmp_path, per_class=4, duplicates=2)
    store = Store.open(index_dir)
    yield store, tmp_path / "photos"
    store.close()


def test_default_keeps_most_pixels_then_bytes_then_oldest():
    assert default_keep([(1, info(1, 10, 10)), (2, info(2, 20, 10))]) == 2
    assert default_keep([(1, info(1, size=5)), (2, info(2, size=9))]) == 2
    assert default_keep([(1, info(1, taken="2021-01-01T00:00:00")), (2, info(2, taken="2020-01-01T00:00:00"))]) == 2
    assert default_keep([(3, info(3)), (2, info(2))]) == 2


def test_similar_and_burst_groups_start_undecided_and_the_csv_says_so(tmp_path):
    m = [Member(i, info(i), 0.97, "", None, "undecided", False, "cosine 0.970") for i in (1, 2)]
    out = tmp_path / "d.csv"
    export_csv([Group(1, "similar", tuple(m))], out)
    rows = list(csv.DictReader(out.open()))
    assert [r["decision"] for r in rows] == ["undecided", "undecided"] and rows[0]["reason"] == "cosine 0.970"


def test_the_csv_writes_names_that_look_like_formulas_as_text(tmp_path):
    """A folder or file named like a formula is written with a leading quote (a spreadsheet shows it as text)."""
    bad = PhotoInfo(1, "/p/=HYPERLINK(x)/@cmd.jpg", "@cmd.jpg", "=HYPERLINK(x)", 10, 0, 5, 5, None, None)
    m = Member(1, bad, 1.0, "", None, "keep", False, "+the group's chosen photo")
    out = tmp_path / "d.csv"
    export_csv([Group(1, "identical files", (m,))], out)
    row = next(csv.DictReader(out.open()))
    assert row["folder"] == "'=HYPERLINK(x)" and row["reason"].startswith("'+")
    assert row["path"] == "/p/=HYPERLINK(x)/@cmd.jpg"  # starts with '/': already text, written as it is


def test_names_in_the_review_are_shown_as_text():
    link = PhotoInfo(1, "/p/x.jpg", "![](https://site.example/t.png)", "[x](https://site.example)", 10, 0, 5, 5,
                     None, None)
    md = member_markdown(Member(1, link, 1.0, "", None, "keep", False, "<img src=x>"))
    assert "](" not in md and "<img" not in md and "\\[x\\]" in md


def test_groups_decisions_persist_and_export_without_touching_photos(index, tmp_path):
    store, photos = index
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in photos.rglob("*") if p.is_file()}
    with PhotoInfoCache(store) as infos:
        dec = Decisions(store.index_dir)
        groups = review_groups(store, infos, dec, "similar photos", 0.999)
        copies = [g for g in groups if g.kind == "identical files"]
        assert len(copies) == 2 and all(len(g.members) == 2 for g in copies)
        g = copies[0]
        assert [m.decision for m in g.members].count("keep") == 1 and not any(m.decided for m in g.members)
        m0 = g.members[0]
        assert m0.info.size and m0.info.width == 64 and m0.info.folder == "circle"
        dec.keep_only(store, g.ids, [g.ids[1]])
        dec.close()
        dec = Decisions(store.index_dir)  # a new page sees the decisions
        g2 = next(x for x in review_groups(store, infos, dec, "similar photos", 0.999) if x.ids == g.ids)
        assert [m.decision for m in g2.members] == ["drop", "keep"] and all(m.decided for m in g2.members)
        with pytest.raises(ValueError, match="keep, drop"):
            dec.set(store, g.ids, "delete")
        out = tmp_path / "out" / "decisions.csv"
        n = export_csv(review_groups(store, infos, dec, "similar photos", 0.999), out)
        rows = list(csv.DictReader(out.open()))
        assert n == len(rows) >= 4
        mine = {int(r["id"]): r for r in rows}
        assert mine[g.ids[0]]["decision"] == "drop" and mine[g.ids[0]]["decided_by"] == "person"
        assert mine[g.ids[0]]["path"] == g2.members[0].info.path and mine[g.ids[0]]["kind"] == "identical files"
        assert int(mine[g.ids[0]]["size_bytes"]) > 0 and mine[g.ids[0]]["date_source"] == "mtime"
        dec.close()
    after = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in photos.rglob("*") if p.is_file()}
    assert after == before


def test_a_decision_does_not_follow_changed_content(index):
    store, photos = index
    i = int(store.all_ids()[0])
    dec = Decisions(store.index_dir)
    dec.set(store, [i], "drop")
    assert dec.get(store, [i]) == {i: "drop"}
    row = store.rows([i])[0]
    store.close()
    with Store.open(store.index_dir, writable=True) as w:
        w.update([i], [{**{k: row[k] for k in ("path", "width", "height", "size", "mtime_ns")}, "sha256": "other"}])
        w.save()
    with Store.open(store.index_dir) as s2:
        assert dec.get(s2, [i]) == {}
    dec.close()
    assert os.path.exists(row["path"]) and Image.open(row["path"]).size


def test_exporting_again_replaces_the_last_duplicates_csv(tmp_path):
    """The page keeps one duplicates CSV (app.exports.keep_newest), as it does for label exports; other
    exports beside it stay."""
    from test_search import ColourEmbedder

    from app import handlers
    from app.page import Page

    index_dir, _ = make_index(tmp_path, per_class=4, duplicates=2)
    page = Page(index_dir, embedder=ColourEmbedder())
    try:
        other = index_dir / "exports" / "labels-x.csv"
        _, first = handlers.export_duplicates(page, "copies", stamp="t1")
        other.write_text("kept")
        _, second = handlers.export_duplicates(page, "copies", stamp="t2")
        assert not first.exists() and second.exists() and other.exists()
        assert sorted(p.name for p in (index_dir / "exports").glob("duplicates-*")) == ["duplicates-t2.csv"]
    finally:
        page.close()
        page.labels.close()
        page.store.close()


def test_the_review_reads_the_verdicts_index_made(tmp_path):
    """After `index`-like check_ahead, the review compares no pair from the pixels again."""
    from byol.fileio import file_sha256
    from index.duplicates import copy_candidates
    from index.photohash import PhotoHashes, PixelCheck, check_ahead, neighbours_of, photos_of

    index_dir, _ = make_index(tmp_path, per_class=4, duplicates=2)
    with Store.open(index_dir, writable=True) as store, PhotoHashes(index_dir) as ph:
        rows = store.rows(store.all_ids())  # content hashes, as `index` writes them
        store.update([r["id"] for r in rows], [{k: r[k] for k in ("path", "width", "height", "size", "mtime_ns")}
                                               | {"sha256": file_sha256(r["path"])} for r in rows])
        first = check_ahead(store, ph)
        photos = photos_of(store, ph)
        pairs, _, _ = copy_candidates(photos, neighbours_of(store))
        assert first == len(pairs)
        check = PixelCheck(ph, photos)
        assert set(check(pairs)) == set(pairs) and check.checked == 0
        assert check_ahead(store, ph) == 0  # nothing new: nothing compared
