"""The store: round trips, ids, consistency, atomic saves under SIGKILL, approximate vs exact search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

from index import folders, repair, reservations
from index.ivf import recall_at_k
from index.store import EncoderMismatch, Store, StoreError, StoreInconsistent, StoreLocked

DIM = 32
REPO = Path(__file__).resolve().parents[1]


def clustered(n: int, d: int = DIM, clusters: int = 50, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """Unit vectors around random unit centres: neighbours are meaningful, like real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rows_for(n: int, start: int = 0) -> list[dict]:
    return [{"path": f"/photos/{i:05d}.jpg", "size": 1000 + i, "mtime_ns": i, "sha256": f"{i:064x}",
             "width": 64, "height": 48} for i in range(start, start + n)]


def new_store(path: Path, **kw) -> Store:
    return Store.create(path, DIM, "a" * 64, "/models/encoder.onnx", {"size": 32, "resize": 32}, **kw)


def test_round_trip_and_self_search(tmp_path):
    x = clustered(300)
    with new_store(tmp_path / "idx") as s:
        ids = s.add(rows_for(300), x)
        assert len(set(ids.tolist())) == 300 and s.count == 300
        s.save()
    with Store.open(tmp_path / "idx", model_sha256="a" * 64) as s:
        assert s.count == 300 and s.dim == DIM and s.index_type == "exact" and s.generation == 1
        np.testing.assert_array_equal(s.all_ids(), np.sort(ids))
        np.testing.assert_allclose(s.get_vectors(ids), x, atol=1e-6)
        scores, found = s.search(s.get_vectors(ids), 5)
        assert scores.dtype == np.float32 and found.dtype == np.int64 and found.shape == (300, 5)
        assert (found[:, 0] == ids).all()  # every stored vector finds itself first
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
        r = s.rows([ids[7], -1, ids[3]])
        assert [d["id"] for d in r] == [ids[7], ids[3]] and r[0]["path"] == "/photos/00007.jpg"
        assert {"id", "path", "width", "height", "size", "mtime_ns", "added_at"} <= set(r[0])
        s_sc, s_id = s.search_by_id(ids[0], 4)
        assert s_id.shape == (4,) and ids[0] not in s_id  # search_by_id excludes the image itself
        manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
        assert manifest["count"] == 300 and manifest["generation"] == 1 and manifest["model_sha256"] == "a" * 64
        with pytest.raises(StoreError, match="read-only"):
            s.remove(ids[:1])


def test_search_pads_when_fewer_than_k(tmp_path):
    with new_store(tmp_path / "idx") as s:
        assert s.search(np.ones(DIM), 3)[1].tolist() == [[-1, -1, -1]]
        s.add(rows_for(2), clustered(2))
        scores, ids = s.search(np.ones(DIM), 5)
        assert (ids[0, 2:] == -1).all() and np.isneginf(scores[0, 2:]).all()
        with pytest.raises(ValueError, match="shape"):
            s.search(np.ones(DIM + 1), 3)


def test_add_update_remove_keep_ids_and_counts(tmp_path):
    x = clustered(60)
    with new_store(tmp_path / "idx") as s:
        ids = s.add(rows_for(50), x[:50])
        s.save()
        s.remove(ids[:10])
        s.update(ids[10:12], [{"size": 1}, {"path": "/photos/moved.jpg"}], x[50:52])
        new = s.add(rows_for(8, start=100), x[52:60])
        assert s.count == 48 and len(s.all_ids()) == 48
        assert new.min() > ids.max()  # ids are never reused
        s.save()
    with Store.open(tmp_path / "idx") as s:
        assert s.count == 48
        np.testing.assert_allclose(s.get_vectors(ids[10:12]), x[50:52], atol=1e-6)
        assert s.rows([ids[11]])[0]["path"] == "/photos/moved.jpg" and s.rows([ids[10]])[0]["size"] == 1
        assert s.rows(ids[:10]) == []
        with pytest.raises(KeyError):
            s.get_vectors(ids[:1])
        assert s.search_by_id(ids[10], 1)[1][0] != ids[10]
        assert {p for p, *_ in folders.rows_under(s, "/photos")} == {r["path"] for r in s.rows(s.all_ids())}


def test_reset_gives_paths_their_old_ids(tmp_path):
    with new_store(tmp_path / "idx") as s:
        ids = s.add(rows_for(5), clustered(5))
        s.save()
        s.reset(16, "b" * 64, "/models/new.onnx", {"size": 64, "resize": 64})
        assert s.count == 0 and s.dim == 16
        again = s.add(rows_for(3)[::-1], clustered(3, d=16))
        assert again.tolist() == ids[:3][::-1].tolist()
        reservations.release(s, keep_paths=[])
        s.save()
    with pytest.raises(EncoderMismatch):
        Store.open(tmp_path / "idx", model_sha256="a" * 64)
    with Store.open(tmp_path / "idx", model_sha256="b" * 64) as s:
        assert s.count == 3 and s.dim == 16


def test_mismatched_encoder_refused_with_rebuild_hint(tmp_path):
    new_store(tmp_path / "idx").close()
    with pytest.raises(EncoderMismatch) as e:
        Store.open(tmp_path / "idx", model_sha256="c" * 64)
    assert "--rebuild" in str(e.value) and "byol-search index FOLDER --model NEW.onnx --out NEW_DIR" in str(e.value)


def test_single_writer_and_not_an_index(tmp_path):
    with new_store(tmp_path / "idx"):
        with pytest.raises(StoreLocked):
            Store.open(tmp_path / "idx", writable=True)
        Store.open(tmp_path / "idx").close()  # readers are welcome
    with pytest.raises(StoreError, match="not an index"):
        Store.open(tmp_path / "nothing")
    with pytest.raises(StoreError, match="already holds"):
        new_store(tmp_path / "idx")


def test_inconsistent_files_are_refused(tmp_path):
    with new_store(tmp_path / "idx") as s:
        s.add(rows_for(5), clustered(5))
        s.save()
    # vectors of another save dropped in place of this generation's
    faiss.write_index(faiss.IndexIDMap2(faiss.IndexFlatIP(DIM)), str(tmp_path / "idx" / "vectors.1.faiss"))
    with pytest.raises(StoreInconsistent, match="0 vectors but meta.sqlite 5"):
        Store.open(tmp_path / "idx")


def test_duplicates_groups(tmp_path):
    rng = np.random.default_rng(1)
    # 10 orthonormal directions: unrelated photos are at cosine 0, so which groups are right is known
    base = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].T[:10].astype(np.float32)
    near = base[:3] + 0.01 * rng.standard_normal((3, DIM)).astype(np.float32)  # cosine ~0.998 to its original
    similar = base[3] + 0.5 * base[9]  # cosine 0.89 to photo 3: alike, but below the threshold
    with new_store(tmp_path / "idx") as s:
        ids = s.add(rows_for(14), np.concatenate([base, near, similar[None]]))
        groups = s.duplicates(threshold=0.99)
        looser = s.duplicates(threshold=0.85)
    exact_dupes = {tuple(sorted(g)) for g in groups}
    for j in range(3):
        assert any(ids[j] in g and ids[10 + j] in g for g in exact_dupes)
    assert all(len(g) >= 2 for g in groups)
    # exactly the three pairs: the seven unrelated photos and the merely similar one stay out
    assert groups == [[int(ids[j]), int(ids[10 + j])] for j in range(3)]
    assert {int(i) for g in groups for i in g}.isdisjoint(int(i) for i in [*ids[3:10], ids[13]])
    assert looser == [[int(ids[j]), int(ids[10 + j])] for j in range(3)] + [[int(ids[3]), int(ids[13])]]


def test_ivf_above_the_limit_recall_vs_exact(tmp_path):
    """With the size threshold lowered, the store switches to IVF and keeps recall@10 >= 0.95 vs exact."""
    x = clustered(4000, d=DIM, clusters=80, spread=0.5, seed=3)
    with new_store(tmp_path / "idx", exact_limit=1000) as s:
        ids = s.add(rows_for(4000), x)
        s.save()
        assert s.index_type == "ivf"
    with Store.open(tmp_path / "idx") as s:
        assert s.index_type == "ivf" and s.count == 4000
        rng = np.random.default_rng(7)
        q = x[rng.choice(4000, 300, replace=False)] + 0.02 * rng.standard_normal((300, DIM)).astype(np.float32)
        exact = faiss.IndexFlatIP(DIM)
        exact.add(x)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        gt = ids[exact.search(qn, 10)[1]]
        assert recall_at_k(s.search(q, 10)[1], gt) >= 0.95
        assert (s.search(x[:50], 1)[1][:, 0] == ids[:50]).all()
        assert s.manifest["index_type"] == "ivf" and s.manifest["recall_at_10"] >= 0.95
    with Store.open(tmp_path / "idx", writable=True) as s:  # removal works on IVF, and shrinking goes exact
        s.remove(ids[:3600])
        s.save()
        assert s.index_type == "exact" and s.count == 400


def test_thumbnails_written_and_removed_after_save(tmp_path):
    with new_store(tmp_path / "idx") as s:
        (i,) = s.add(rows_for(1), clustered(1))
        p = s.thumbs.put(i, Image.new("RGB", (1000, 500), "red"))
        assert p == s.thumbs.path(i) and Image.open(p).size == (256, 128)
        s.save()
        s.remove([i])
        assert p.exists()  # the previous generation still shows it until the removal is saved
        s.save()
        assert not p.exists()


_KILLER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {repo!r})
    import index.store as store
    stage = sys.argv[1]
    def step(name):
        if name == stage:
            os.kill(os.getpid(), signal.SIGKILL)
    store._save_step = step
    s = store.Store.open(sys.argv[2], writable=True)
    rng = np.random.default_rng(0)
    ids = s.all_ids()
    s.remove(ids[:5])
    s.update(ids[5:6], [{{"size": -1}}], rng.standard_normal((1, {dim})))
    s.add([{{"path": "/new/%d.jpg" % i}} for i in range(20)], rng.standard_normal((20, {dim})))
    s.save()
    print("finished")
""")


@pytest.mark.parametrize("stage", ["begin", "faiss_tmp_written", "faiss_written", "committed", "manifest_written"])
def test_killed_during_save_leaves_a_loadable_consistent_index(tmp_path, stage):
    with new_store(tmp_path / "idx") as s:
        ids = s.add(rows_for(50), clustered(50))
        s.save()
    script = tmp_path / "killer.py"
    script.write_text(_KILLER.format(repo=str(REPO), dim=DIM))
    proc = subprocess.run([sys.executable, str(script), stage, str(tmp_path / "idx")], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    committed = stage in ("committed", "manifest_written")
    with Store.open(tmp_path / "idx") as s:  # loads, and counts agree (checked on open)
        assert s.count == (65 if committed else 50) and s.generation == (2 if committed else 1)
        assert (s.rows([ids[5]])[0]["size"] == -1) == committed
        assert (s.search(s.get_vectors(s.all_ids()), 1)[1][:, 0] == s.all_ids()).all()
    with Store.open(tmp_path / "idx", writable=True) as s:  # and the next writer carries on
        s.add(rows_for(1, start=900), clustered(1))
        s.save()
        assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["generation"] == s.generation
    assert not list((tmp_path / "idx").glob(".vectors.*.tmp"))


# ---------------------------------------------------------------- names, readers beside a writer, rebuilds (issue 11)
def test_paths_that_are_not_utf8_round_trip(tmp_path):
    st = new_store(tmp_path / "idx")
    odd = str(tmp_path / os.fsdecode(b"caf\xe9.jpg"))
    ids = st.add([{"path": odd, "sha256": "a" * 64}, {"path": str(tmp_path / "cafe.jpg")}], clustered(2))
    st.save()
    assert [r[1] for r in folders.rows_under(st, str(tmp_path)) if r[0] == odd] == [ids[0]]
    assert st.rows([ids[0]])[0]["path"] == odd
    st.update([ids[0]], [{"path": odd, "size": 5}])
    st.save()
    st.close()
    with Store.open(tmp_path / "idx") as ro:
        assert ro.rows(ids)[0]["path"] == odd and ro.rows(ids)[1]["path"] == str(tmp_path / "cafe.jpg")


def test_a_reader_keeps_the_ids_of_its_generation_while_the_writer_saves(tmp_path):
    """The page's store answers with the ids its vectors hold, whatever `index` saved since."""
    st = new_store(tmp_path / "idx")
    first = st.add(rows_for(20), clustered(20))
    st.save()
    ro = Store.open(tmp_path / "idx")
    st.remove(first[:10])
    st.add(rows_for(5, start=100), clustered(5, seed=1))
    st.save()
    ids = ro.all_ids()
    assert np.array_equal(ids, first) and ro.get_vectors(ids).shape == (20, DIM)  # no KeyError
    assert ro.refresh() and len(ro.all_ids()) == 15
    assert ro.get_vectors(ids).shape == (20, DIM)  # a request that read the ids just before the refresh
    ro.close()
    st.close()


def test_rebuild_opens_an_index_that_open_refuses_and_keeps_ids(tmp_path):
    """The advice 'rebuild it with --rebuild' works on the very index that got it."""
    st = new_store(tmp_path / "idx")
    ids = st.add(rows_for(6), clustered(6))
    st.save()
    st.close()
    for p in (tmp_path / "idx").glob("vectors.*.faiss"):
        p.unlink()
    with pytest.raises(StoreInconsistent, match="--rebuild"):
        Store.open(tmp_path / "idx")
    st = repair.open_for_rebuild(tmp_path / "idx", DIM, "b" * 64, tmp_path / "new.onnx", {})
    again = st.add(rows_for(6), clustered(6, seed=2))
    st.save()
    st.close()
    assert np.array_equal(np.sort(again), np.sort(ids))
    with Store.open(tmp_path / "idx", model_sha256="b" * 64) as ro:
        assert ro.count == 6


def test_rebuild_moves_a_database_that_is_not_an_index_aside(tmp_path):
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "meta.sqlite").write_bytes(b"not a database at all" * 100)
    st = repair.open_for_rebuild(tmp_path / "idx", DIM, "b" * 64, tmp_path / "new.onnx", {})
    st.add(rows_for(2), clustered(2))
    st.save()
    st.close()
    assert list((tmp_path / "idx").glob("meta.sqlite.broken-*")) and Store.open(tmp_path / "idx").count == 2
