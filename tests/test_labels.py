"""app/labels.py: the label database, the probe that labels the rest, and the exports."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from imagegen import shape_image
from PIL import Image
from test_search import ColourEmbedder, make_index

from app.labels import Labels, check_label_name
from index.store import Store


@pytest.fixture
def setup(tmp_path):
    index_dir, by_class = make_index(tmp_path, per_class=10)
    store = Store.open(index_dir)
    labels = Labels(index_dir)
    yield store, labels, by_class, index_dir
    labels.close()
    store.close()


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
    assert report.accuracy == pytest.approx(1.0)
    preds = labels.predictions(store.all_ids())
    for cls, ids in by_class.items():
        assert all(preds[i].label == cls for i in ids)
        assert all(0.0 <= preds[i].margin <= preds[i].confidence <= 1.0 for i in ids)


def test_one_label_per_class_is_enough(setup):
    store, labels, by_class, _ = setup
    for cls, ids in by_class.items():
        labels.assign(ids[:1], cls)
    report = labels.train(store)
    assert report.accuracy is None  # one example per class: nothing to cross-validate on
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
        w.put_thumbnail(new_id, img)
        w.save()
    labels.close()
    labels = Labels(index_dir)
    with Store.open(index_dir) as store:
        assert labels.labelled()[kept[0]] == "round" and new_id not in set(kept + gone)
        report = labels.train(store)  # the removed photos' labels are ignored, not an error
        assert report.counts == {"boxy": 2, "round": 2} and report.predicted == store.count
        assert new_id in labels.predictions([new_id])
    labels.close()


def test_exports(setup, tmp_path):
    import datasets

    store, labels, by_class, _ = setup
    labels.assign(by_class["circle"][:2], "round")
    labels.assign(by_class["square"][:2], "boxy")
    labels.train(store)

    n = labels.export_csv(store, tmp_path / "out" / "labels.csv")
    rows = list(csv.DictReader(open(tmp_path / "out" / "labels.csv")))
    assert n == len(rows) == store.count
    row = next(r for r in rows if int(r["id"]) == by_class["circle"][0])
    assert row["label"] == "round" and row["source"] == "human" and row["predicted"] == "round"

    counts = labels.export_imagefolder(store, tmp_path / "links")
    assert counts == {"round": 2, "boxy": 2}
    files = sorted((tmp_path / "links" / "round").iterdir())
    assert all(f.is_symlink() and Image.open(f).size == (64, 48) for f in files)
    with pytest.raises(ValueError, match="not empty"):
        labels.export_imagefolder(store, tmp_path / "links")
    counts = labels.export_imagefolder(store, tmp_path / "copies", copy=True, include_predictions=True)
    assert sum(counts.values()) == store.count
    assert not any(f.is_symlink() for f in (tmp_path / "copies").rglob("*"))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary folder left behind

    n = labels.export_hf(store, tmp_path / "hf", include_predictions=True, min_confidence=0.0)
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert n == len(ds) == store.count
    assert ds.features["label"].names == ["boxy", "round"]
    first = ds[0]
    assert first["image"].size == (64, 48) and first["source"] in ("human", "predicted")
