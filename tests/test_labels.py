"""app/labels.py: the label database (its probe: test_page_probe.py; exports: test_exports.py)."""

from __future__ import annotations

import numpy as np
import pytest
from imagegen import shape_image
from PIL import Image
from test_search import ColourEmbedder, make_index

from app.labels import Labels, check_label_name
from app.probe import Probe
from index.store import Store


def test_vocabulary_create_rename_delete(setup):
    store, labels, by_class, _ = setup
    labels.create("round")
    labels.assign(by_class["circle"][:2], "round")
    labels.assign(by_class["square"][:1], "boxy")  # assigning creates the label
    assert labels.names() == ["boxy", "round"]
    labels.rename("round", "circles")
    assert labels.labelled() == {by_class["circle"][0]: "circles", by_class["circle"][1]: "circles",
                                 by_class["square"][0]: "boxy"}
    with pytest.raises(ValueError, match="already exists"):
        labels.rename("circles", "boxy")
    labels.delete("boxy")
    assert labels.names() == ["circles"] and by_class["square"][0] not in labels.labelled()
    for bad in ("", "  ", "../x", "a/b", ".hidden", "x" * 65):
        with pytest.raises(ValueError):
            check_label_name(bad)


def test_assign_replaces_and_unassign_removes(setup):
    _, labels, by_class, _ = setup
    i = by_class["circle"][0]
    labels.assign([i], "a")
    labels.assign([i], "b")
    assert labels.labelled() == {i: "b"} and labels.counts()["b"]["human"] == 1
    labels.unassign([i])
    assert labels.labelled() == {}


def test_labels_survive_an_index_update(tmp_path):
    index_dir, by_class = make_index(tmp_path, per_class=6)
    labels = Labels(index_dir)
    kept, gone = by_class["circle"][:2], by_class["square"][:2]
    labels.assign(kept, "round")
    labels.assign(gone, "boxy")
    labels.assign(by_class["square"][2:4], "boxy")
    # an incremental update: two labelled photos deleted, a new one added
    with Store.open(index_dir, writable=True) as w:
        w.remove(gone)
        img = shape_image("triangle", np.random.default_rng(5), (64, 48))
        p = tmp_path / "photos" / "new.png"
        img.save(p)
        new_id = int(w.add([{"path": str(p)}], ColourEmbedder().embed_images([img]))[0])
        w.thumbs.put(new_id, img)
        w.save()
    labels.close()
    labels = Labels(index_dir)
    with Store.open(index_dir) as store:
        assert labels.labelled()[kept[0]] == "round" and new_id not in set(kept + gone)
        report = Probe(labels).train(store)  # the removed photos' labels are ignored, not an error
        assert report.counts == {"boxy": 2, "round": 2} and report.predicted == store.count
        assert new_id in labels.predictions([new_id])
    labels.close()


# ---------------------------------------------------------------- labels follow photos (issue 11)
def index_photos(index_dir, paths) -> dict[str, int]:
    """An index of these files, in this order, as `byol-search index` makes it (content hashes included)."""
    import hashlib

    from byol.preprocess import Preprocess

    images = [Image.open(p).convert("RGB") for p in paths]
    enc = ColourEmbedder()
    store = Store.create(index_dir, enc.dim, "0" * 64, index_dir.parent / "encoder.onnx", Preprocess().to_dict())
    rows = [{"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in paths]
    ids = store.add(rows, enc.embed_images(images))
    store.save()
    store.close()
    return {str(p): int(i) for p, i in zip(paths, ids)}


def shapes(folder, n: int = 6) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        p = folder / f"{i}.png"
        shape_image(("circle", "square", "triangle")[i % 3], rng, (32, 32)).save(p)
        out.append(p)
    return out


def test_labels_follow_the_photo_when_the_index_is_made_again_from_nothing(tmp_path):
    """meta.sqlite deleted, ids restart at 1 in another order: every label is on its own photo, none elsewhere."""
    paths = shapes(tmp_path / "photos")
    index_dir = tmp_path / "index"
    ids = index_photos(index_dir, paths)
    labels = Labels(index_dir)
    labels.assign([ids[str(paths[0])], ids[str(paths[1])]], "first")
    labels.assign([ids[str(paths[2])]], "third")
    for f in index_dir.glob("*"):
        if f.name != "labels.sqlite" and f.is_file() and not f.name.startswith("labels.sqlite"):
            f.unlink()
    paths[5].unlink()
    ids = index_photos(index_dir, [paths[4], paths[3], paths[2], paths[1], paths[0]])  # same ids, other photos
    assert labels.labelled() == {ids[str(paths[0])]: "first", ids[str(paths[1])]: "first",
                                 ids[str(paths[2])]: "third"}
    # a moved photo keeps its label by content; an edited one by path
    labels.close()
    labels = Labels(index_dir)
    assert labels.labels_of([ids[str(paths[2])]]) == {ids[str(paths[2])]: ("third", "human")}
    labels.close()


def test_labels_of_photos_gone_are_kept_and_come_back_with_them(tmp_path):
    paths = shapes(tmp_path / "photos", 3)
    index_dir = tmp_path / "index"
    ids = index_photos(index_dir, paths)
    labels = Labels(index_dir)
    labels.assign([ids[str(paths[0])]], "a")
    with Store.open(index_dir, writable=True) as w:
        w.remove([ids[str(paths[0])]])
        w.save()
    assert labels.labelled() == {} and labels.counts()["a"]["human"] == 0
    with Store.open(index_dir, writable=True) as w:  # the photo returns, under another name and a new id
        moved = tmp_path / "photos" / "back.png"
        paths[0].rename(moved)
        sha = __import__("hashlib").sha256(moved.read_bytes()).hexdigest()
        new = int(w.add([{"path": str(moved), "sha256": sha}], ColourEmbedder().embed_images([Image.open(moved)]))[0])
        w.save()
    assert new != ids[str(paths[0])] and labels.labelled() == {new: "a"}
    labels.close()


def test_a_labels_file_keyed_by_id_alone_is_migrated(tmp_path):
    """Labels files written before hashes were kept: ids are trusted only where the label is younger than
    the index; a label older than the index (whose ids restarted since) attaches to nothing."""
    import sqlite3
    import time

    paths = shapes(tmp_path / "photos", 3)
    index_dir = tmp_path / "index"
    ids = index_photos(index_dir, paths)
    db = sqlite3.connect(index_dir / "labels.sqlite")
    db.executescript("CREATE TABLE label_names (name TEXT PRIMARY KEY, at REAL NOT NULL);"
                     "CREATE TABLE labels (image_id INTEGER PRIMARY KEY, label TEXT NOT NULL REFERENCES "
                     "label_names(name) ON UPDATE CASCADE ON DELETE CASCADE, source TEXT NOT NULL DEFAULT 'human', "
                     "at REAL NOT NULL);")
    now = time.time()
    db.execute("INSERT INTO label_names VALUES ('new', ?), ('old', ?)", (now, now))
    db.execute("INSERT INTO labels VALUES (?, 'new', 'human', ?)", (ids[str(paths[0])], now))
    db.execute("INSERT INTO labels VALUES (?, 'old', 'human', ?)", (ids[str(paths[1])], now - 86400))
    db.commit()
    db.close()
    labels = Labels(index_dir)
    assert labels.labelled() == {ids[str(paths[0])]: "new"}
    # and from now on it follows the photo
    paths[0].rename(tmp_path / "photos" / "moved.png")
    with Store.open(index_dir, writable=True) as w:
        w.update([ids[str(paths[0])]], [{"path": str(tmp_path / "photos" / "moved.png")}])
        w.save()
    assert labels.labelled() == {ids[str(paths[0])]: "new"}
    labels.close()


def test_a_failed_commit_is_rolled_back_and_later_writes_work(setup):
    """A COMMIT that fails leaves no transaction open: the next write succeeds without a restart."""
    _, labels, by_class, _ = setup
    labels._db.execute("PRAGMA defer_foreign_keys=ON")  # the constraint is checked by COMMIT, which fails
    with pytest.raises(Exception, match="FOREIGN KEY"):
        labels.write(lambda db: db.execute("INSERT INTO labels (image_id, label, at) VALUES (1, 'nope', 0)"))
    assert not labels._db.in_transaction
    labels.assign(by_class["circle"][:1], "round")
    assert labels.labelled() == {by_class["circle"][0]: "round"}


def test_label_names_with_control_characters_are_refused():
    for bad in ("a\nb", "tab\there", "bell\x07", "line\u2028sep", "zero\u200bwidth"):
        with pytest.raises(ValueError, match="control characters"):
            check_label_name(bad)
    assert check_label_name("  café au lait  ") == "café au lait"


def test_label_names_that_start_like_a_formula_are_refused_and_the_message_says_so(setup):
    _, labels, by_class, _ = setup
    for bad in ("=1+1", "+cats", "-dogs", "@SUM(A1)", "=HYPERLINK(\"x\")", "  =1+1"):
        with pytest.raises(ValueError, match=r"may not start with = \+ - or @"):
            check_label_name(bad)
        with pytest.raises(ValueError, match="spreadsheet"):
            labels.create(bad)
    labels.create("cats")
    with pytest.raises(ValueError, match="may not start with"):
        labels.rename("cats", "=cmd|' /C calc'!A0")
    with pytest.raises(ValueError, match="may not start with"):
        labels.assign(by_class["circle"][:1], "@x")
    assert labels.names() == ["cats"] and not labels.labelled()
    for fine in ("a=b", "1+1", "cats-and-dogs", "e-mail @home"):  # only the first character makes a formula
        assert check_label_name(fine) == fine
