"""app/filters.py: folder, label, prediction and date filters, and a filtered search equal to brute force."""

from __future__ import annotations

import os
from datetime import datetime

import numpy as np
import pytest
from test_search import make_index

from app import filters
from app.filters import Filter, allowed, search_filtered
from byol.preprocess import Preprocess
from index.photoinfo import PhotoInfoCache
from index.store import Store


@pytest.fixture
def index(tmp_path):
    index_dir, by_class = make_index(tmp_path, per_class=5)
    photos = tmp_path / "photos"
    for j in range(len(by_class["square"])):  # squares dated 2020-01-0<j+1>
        p = photos / "square" / f"square_{j:03d}.png"
        t = datetime(2020, 1, j + 1, 12).timestamp()  # noon local time: the date the facts show
        os.utime(p, (t, t))
    store = Store.open(index_dir)
    infos = PhotoInfoCache(store)
    infos.fill()
    yield store, by_class, infos
    infos.close()
    store.close()


def test_no_filter_is_everything(index):
    store, _, infos = index
    a = allowed(store, Filter(), infos)
    assert a.ids is None and a.count == a.total == 15 and a.summary == "15 photos"


def test_folder_label_prediction_and_dates_combine(index):
    store, by_class, infos = index
    assert sorted(allowed(store, Filter(folder="circle/"), infos).ids) == sorted(by_class["circle"])
    assert allowed(store, Filter(folder="circ"), infos).count == 0  # a folder, not a name prefix
    labelled = {by_class["circle"][0]: "round", by_class["square"][0]: "round"}
    predicted = {i: "round" for i in by_class["circle"]}
    a = allowed(store, Filter(folder="circle", label="round"), infos, labelled, predicted)
    assert a.ids.tolist() == [by_class["circle"][0]] and "1 of 15" in a.summary
    assert allowed(store, Filter(prediction="round"), infos, labelled, predicted).count == 5
    d = allowed(store, Filter(date_from="2020-01-02", date_to="2020-01-04"), infos)
    assert sorted(d.ids) == sorted(by_class["square"][1:4])
    assert allowed(store, Filter(date_to="2020-01-01"), infos).ids.tolist() == [by_class["square"][0]]
    with pytest.raises(ValueError, match="not a date"):
        allowed(store, Filter(date_from="yesterday"), infos)


def test_filtered_search_equals_brute_force_on_both_paths(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    store = Store.create(tmp_path / "ix", 16, "0" * 64, tmp_path / "e.onnx", Preprocess().to_dict())
    ids = store.add([{"path": f"/p/{i}.jpg"} for i in range(3000)], x)
    store.save()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for frac in (0.02, 0.5):
        allow = np.sort(rng.choice(ids, int(3000 * frac), replace=False))
        for exact_max in (10**9, 0):  # exact scoring, then over-fetch from the index
            monkeypatch.setattr(filters, "EXACT_MAX", exact_max)
            q = rng.normal(size=16)
            got = search_filtered(store, q, allow, k=10, offset=5)
            s = xn[np.searchsorted(ids, allow)] @ (q / np.linalg.norm(q))
            ref = allow[np.argsort(-s)][5:15]
            assert [h.id for h in got] == ref.tolist()
            assert all(h.id in set(allow.tolist()) for h in got)
    assert [h.id for h in search_filtered(store, x[0], ids[:3], k=10)][:1] == [ids[0]]
    assert len(search_filtered(store, x[0], ids[:3], k=10)) == 3
    assert search_filtered(store, x[0], np.array([], np.int64), k=5) == []
    assert len(search_filtered(store, x[0], None, k=5)) == 5
    store.close()
