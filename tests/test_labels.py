"""app/labels.py: the label database and the probe that labels the rest (exports: test_exports.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from imagegen import shape_image
from PIL import Image
from test_search import ColourEmbedder, make_index

from app.labels import Labels, check_label_name
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


def test_probe_learns_separable_embeddings(setup):
    store, labels, by_class, _ = setup
    for cls, ids in by_class.items():
        labels.assign(ids[:2], cls)
    report = labels.train(store)
    assert report.classes == sorted(by_class) and report.predicted == store.count
    assert report.accuracy is not None and report.accuracy >= 0.9  # every photo is right: the estimate says so
    assert report.accuracy_range is not None and report.accuracy_range[0] <= report.accuracy <= report.accuracy_range[1]
    preds = labels.predictions(store.all_ids())
    for cls, ids in by_class.items():
        assert all(preds[i].label == cls for i in ids)
        assert all(0.0 <= preds[i].margin <= preds[i].confidence <= 1.0 for i in ids)


def test_one_label_per_class_is_enough(setup):
    store, labels, by_class, _ = setup
    for cls, ids in by_class.items():
        labels.assign(ids[:1], cls)
    report = labels.train(store)
    assert report.accuracy is None and report.accuracy_range is None  # one example per class: no estimate
    preds = labels.predictions(store.all_ids())
    correct = sum(preds[i].label == cls for cls, ids in by_class.items() for i in ids)
    assert correct / store.count >= 0.9


def test_training_needs_two_labels(setup):
    store, labels, by_class, _ = setup
    labels.assign(by_class["circle"][:3], "round")
    with pytest.raises(ValueError, match="two different labels"):
        labels.train(store)
    with pytest.raises(ValueError, match="no probe"):
        labels.predict(store)


def test_predictions_persist_across_reopen(setup):
    store, labels, by_class, index_dir = setup
    labels.assign(by_class["circle"][:2], "round")
    labels.assign(by_class["square"][:2], "boxy")
    labels.train(store)
    before = labels.predictions(store.all_ids())
    labels.close()
    again = Labels(index_dir)
    try:
        assert again.predictions(store.all_ids()) == before
        version, classes, probe, _ = again.last_probe()
        assert classes == ["boxy", "round"] and probe.weight.shape == (2, store.dim)
        assert again.predict(store) == store.count  # the stored probe predicts again without retraining
    finally:
        again.close()


def test_probe_is_calibrated_logistic_regression_on_the_embeddings(setup):
    """The stored probe is byol.probe.fit_page's (logistic regression, logits over a temperature), predicting
    the plain embeddings; the reported accuracy is byol.probe.estimate's."""
    from byol.probe import estimate, fit_linear, fit_page

    store, labels, by_class, _ = setup
    for cls, ids in by_class.items():
        labels.assign(ids[:3], cls)
    report = labels.train(store)
    ids = sorted(labels.labelled())
    names = sorted(by_class)
    y = np.array([names.index(labels.labelled()[i]) for i in ids])
    x = store.get_vectors(ids)
    want = fit_page(x, y, len(names))
    _, _, stored, accuracy = labels.last_probe()
    every = store.all_ids()
    preds = labels.predictions(every)
    p = want.probe.predict_proba(store.get_vectors(every))
    assert [preds[int(i)].label for i in every] == [names[c] for c in p.argmax(1)]
    # two fits of the same labels agree as far as L-BFGS's tolerance: confidences to a thousandth
    np.testing.assert_allclose([preds[int(i)].confidence for i in every], p.max(1), atol=1e-3)
    plain = fit_linear(x, y, len(names), 1e-4)  # the same classifier before calibration: same predictions
    assert (plain.predict(store.get_vectors(every))[0] == p.argmax(1)).all()
    rest = [i for i in every if i not in set(ids)]
    reported = estimate(want.cv, float(np.mean([preds[int(i)].confidence for i in rest])))
    assert reported is not None and report.accuracy == pytest.approx(reported[0], abs=1e-3) == accuracy
    assert labels._query("SELECT features FROM probes ORDER BY version DESC LIMIT 1") == [(None,)]


def test_neighbour_graph_follows_the_index(setup, tmp_path):
    """The graph a probe stored before (features 'neighbours') predicts with is found once per version of the
    index: a new photo joins it at the next use."""
    store, labels, by_class, _ = setup
    first = labels._graphs.get(store)
    assert labels._graphs.get(store) is first  # same version: kept
    vec = store.get_vectors(by_class["circle"][:1])
    with Store.open(store.index_dir, writable=True) as w:
        w.add([{"path": str(tmp_path / "new.png")}], vec)
        w.save()
    store.refresh()
    ids, nc = labels._graphs.get(store)
    assert len(ids) == store.count == len(first[0]) + 1 and nc.features.shape == (store.count, store.dim)


def test_label_next_is_least_certain_and_unlabelled(setup):
    store, labels, by_class, _ = setup
    labels.assign(by_class["circle"][:1], "round")
    labels.assign(by_class["square"][:1], "boxy")
    labels.train(store)
    nxt = labels.label_next(5)
    margins = [p.margin for p in nxt]
    assert margins == sorted(margins) and len(nxt) == 5
    assert not set(p.id for p in nxt) & set(labels.labelled())
    all_margins = sorted(p.margin for i, p in labels.predictions(store.all_ids()).items() if i not in labels.labelled())
    assert margins == pytest.approx(all_margins[:5])


def test_accept_in_bulk_keeps_human_labels(setup):
    store, labels, by_class, _ = setup
    labels.assign(by_class["circle"][:2], "round")
    labels.assign(by_class["square"][:2], "boxy")
    labels.train(store)
    labels.assign([by_class["triangle"][0]], "round")  # a person's label, whatever the probe says
    preds = labels.predictions(store.all_ids())
    n = labels.accept(min_confidence=0.0)
    assert n == store.count - 5
    got = labels.labelled()
    assert got[by_class["triangle"][0]] == "round"
    assert labels.labelled("accepted") == {i: p.label for i, p in preds.items() if i not in labels.labelled("human")}
    labels.unassign(by_class["square"][2:4])
    assert labels.accept(ids=by_class["square"][2:4]) == 2
    with pytest.raises(ValueError):
        labels.accept()


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
        report = labels.train(store)  # the removed photos' labels are ignored, not an error
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


def test_a_probe_saved_before_neighbour_averaging_still_predicts(setup):
    """A labels file whose probes table predates the `features` column: the column is added, the old probe
    predicts on the plain embeddings, and the next training is plain again."""
    import sqlite3

    from byol.probe import fit_fewshot

    store, labels, by_class, index_dir = setup
    names = sorted(by_class)
    for cls in names:
        labels.assign(by_class[cls][:2], cls)
    labels.close()
    ids = [i for cls in names for i in by_class[cls][:2]]
    old = fit_fewshot(store.get_vectors(ids), np.repeat(np.arange(len(names)), 2), len(names))
    db = sqlite3.connect(index_dir / "labels.sqlite")
    db.executescript("DROP TABLE predictions; DROP TABLE probes; CREATE TABLE probes (version INTEGER PRIMARY KEY "
                     "AUTOINCREMENT, at REAL NOT NULL, classes TEXT NOT NULL, counts TEXT NOT NULL, accuracy REAL, "
                     "dim INTEGER NOT NULL, weight BLOB NOT NULL, bias BLOB NOT NULL, model_sha256 TEXT);")
    db.execute("INSERT INTO probes (at, classes, counts, dim, weight, bias, model_sha256) VALUES (0, ?, '{}', ?, ?, ?, ?)",
               (json.dumps(names), store.dim, old.weight.tobytes(), old.bias.tobytes(), store.model_sha256))
    db.commit()
    db.close()
    again = Labels(index_dir)
    try:
        assert again.predict(store) == store.count
        preds = again.predictions(store.all_ids())
        want = old.predict_proba(store.get_vectors(store.all_ids())).max(1)
        np.testing.assert_allclose([preds[int(i)].confidence for i in store.all_ids()], want, atol=1e-4)
        again.train(store)
        assert again._query("SELECT features FROM probes ORDER BY version DESC LIMIT 1") == [(None,)]
    finally:
        again.close()


def test_a_failed_commit_is_rolled_back_and_later_writes_work(setup):
    """A COMMIT that fails leaves no transaction open: the next write succeeds without a restart."""
    _, labels, by_class, _ = setup
    labels._db.execute("PRAGMA defer_foreign_keys=ON")  # the constraint is checked by COMMIT, which fails
    with pytest.raises(Exception, match="FOREIGN KEY"):
        labels._write(lambda db: db.execute("INSERT INTO labels (image_id, label, at) VALUES (1, 'nope', 0)"))
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


def test_the_estimate_is_within_reach_of_the_truth_on_noisy_classes():
    """On embeddings where the truth is well below 100% (overlapping classes), the reported accuracy lies within
    8 points of the share of unlabelled photos predicted right on average over 10 draws of 5 labels per class,
    and its range holds that share in 7 draws of 10 at least."""
    from byol.probe import LinearProbe, estimate, fit_page

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 300)
    x = rng.normal(size=(4, 32))[y] * 0.08 + rng.normal(size=(len(y), 32)) / np.sqrt(32) * 1.0
    hits = []
    for _ in range(10):
        rows = np.concatenate([rng.choice(np.flatnonzero(y == c), 5, replace=False) for c in range(4)])
        fitted = fit_page(x[rows], y[rows], 4)
        rest = np.setdiff1d(np.arange(len(y)), rows)
        p = fitted.probe.predict_proba(x[rest])
        truth = float((p.argmax(1) == y[rest]).mean())
        acc, low, high = estimate(fitted.cv, float(p.max(1).mean()))
        hits.append((acc - truth, low <= truth <= high))
        assert isinstance(fitted.probe, LinearProbe) and 0.4 < truth < 0.9  # neither trivial nor hopeless
    assert abs(np.mean([d for d, _ in hits])) <= 0.08 and np.mean([h for _, h in hits]) >= 0.7, hits


def test_a_probe_that_averaged_over_neighbours_still_predicts_through_the_graph(setup):
    """Training needs no neighbour graph; a probe stored by the neighbour classifier (features 'neighbours')
    still predicts with it: each photo's probabilities are its neighbours'."""
    store, labels, by_class, _ = setup
    for cls, ids in by_class.items():
        labels.assign(ids[:2], cls)
    labels.train(store)
    assert labels._graphs._value is None  # training found no graph
    names = sorted(by_class)
    labels.prepare(store)  # what the page does in the background from launch
    graph_ids, nc = labels._graphs.get(store)
    rows = np.searchsorted(graph_ids, sorted(labels.labelled()))
    old = nc.fit(rows, [names.index(labels.labelled()[int(graph_ids[r])]) for r in rows], len(names))
    labels._write(lambda db: db.execute(
        "INSERT INTO probes (at, classes, counts, dim, weight, bias, model_sha256, features) "
        "VALUES (0, ?, '{}', ?, ?, ?, ?, 'neighbours')",
        (json.dumps(names), store.dim, old.weight.tobytes(), old.bias.tobytes(), store.model_sha256)))
    assert labels.predict(store) == store.count
    preds = labels.predictions(graph_ids)
    assert [preds[int(i)].label for i in graph_ids] == [names[c] for c in nc.predict_proba(old).argmax(1)]
