"""index/folders.py: the photos' root folder, the ids under a folder and the folders holding photos, asked of the
path index, against the same answers computed from every row (Store.rows of every id)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from byol.preprocess import Preprocess
from index import folders
from index.store import Store

NOT_UTF8 = os.fsdecode(b"caf\xe9")  # a Latin-1 name: stored as a BLOB of its bytes


def _store(tmp_path: Path, paths: list[str]) -> Store:
    store = Store.create(tmp_path / "index", 4, "0" * 64, tmp_path / "m.onnx", Preprocess().to_dict())
    x = np.random.default_rng(0).normal(size=(len(paths), 4)).astype(np.float32)
    store.add([{"path": p} for p in paths], x)
    store.save()
    return store


def _paths(store: Store) -> dict[str, int]:
    return {r["path"]: r["id"] for r in store.rows(store.all_ids())}


def _brute_under(store: Store, folder: str) -> list[int]:
    return sorted(i for p, i in _paths(store).items() if p == folder or p.startswith(folder.rstrip("/") + "/"))


@pytest.fixture
def store(tmp_path):
    top = str(tmp_path / "photos")
    paths = [f"{top}/a/1.jpg", f"{top}/a/b/2.jpg", f"{top}/a/b/c/3.jpg", f"{top}/ab/4.jpg", f"{top}/a0/5.jpg",
             f"{top}/a.jpg", f"{top}/{NOT_UTF8}/6.jpg", f"{top}/a/{NOT_UTF8}.jpg", f"{top}/50%_off/7.jpg",
             f"{top}/5x_off/8.jpg", f"{top}/z/9.jpg"]
    s = _store(tmp_path, paths)
    yield s, top
    s.close()


def test_root_is_the_deepest_common_folder(store, tmp_path):
    s, top = store
    assert folders.root(s) == top
    assert folders.root(s) == os.path.commonpath([os.path.dirname(p) for p in _paths(s)])


def test_root_of_one_folder_and_of_none(tmp_path):
    s = _store(tmp_path, [str(tmp_path / "p" / "x.jpg"), str(tmp_path / "p" / "y.jpg")])
    assert folders.root(s) == str(tmp_path / "p")
    s.remove(s.all_ids())
    s.save()
    assert folders.root(s) == ""
    s.close()


def test_root_with_only_names_that_are_not_utf8(tmp_path):
    d = tmp_path / NOT_UTF8
    s = _store(tmp_path, [str(d / "1.jpg"), str(d / "sub" / "2.jpg")])
    assert folders.root(s) == str(d)
    s.close()


@pytest.mark.parametrize("rel", ["a", "a/", "a/b", "ab", "a0", NOT_UTF8, "50%_off", "5x_off", "z", "", "nowhere",
                                 "a/1.jpg"])
def test_ids_under_equals_every_path_checked(store, rel):
    s, top = store
    folder = os.path.join(top, rel) if rel else top
    assert folders.ids_under(s, folder).tolist() == _brute_under(s, folder)


def test_ids_under_is_a_folder_not_a_name_prefix(store):
    s, top = store
    rows = {r["path"]: r["id"] for r in s.rows(folders.ids_under(s, f"{top}/a"))}
    assert f"{top}/ab/4.jpg" not in rows and f"{top}/a0/5.jpg" not in rows and f"{top}/a.jpg" not in rows
    assert {f"{top}/a/1.jpg", f"{top}/a/b/c/3.jpg", f"{top}/a/{NOT_UTF8}.jpg"} <= set(rows)


def test_ids_under_hostile_text_selects_nothing_else(store):
    s, top = store
    for text in ("%", "_", "' OR 1=1 --", "\x00", "../..", "*"):
        got = folders.ids_under(s, os.path.join(top, text))
        assert got.tolist() == _brute_under(s, os.path.join(top, text))


def test_folders_lists_every_folder_and_its_parents(store):
    s, top = store
    want = {"a", "a/b", "a/b/c", "ab", "a0", NOT_UTF8, "50%_off", "5x_off", "z"}
    assert folders.folders(s, top) == sorted(want)
    assert folders.folders(s, f"{top}/a") == ["b", "b/c"]
    assert len(folders.folders(s, top, limit=3)) == 3


def test_folders_reads_in_batches(store, monkeypatch):
    s, top = store
    monkeypatch.setattr(folders, "BATCH", 2)
    assert folders.folders(s, top) == sorted({"a", "a/b", "a/b/c", "ab", "a0", NOT_UTF8, "50%_off", "5x_off", "z"})
