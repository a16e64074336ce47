"""The index on disk (index/ondisk.py): recall against exact search, updates, shards encoded by the runner
offered for the folder, the store's choice by memory limit, atomic saves under SIGKILL while a base is built,
and the page and commands on it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import faiss
import numpy as np
import pytest
from imagegen import CLASSES
from test_search import ColourEmbedder, make_index
from test_store import DIM, REPO, clustered, new_store, rows_for

from app import search
from index import ivfshards, ondisk
from index.ivf import recall_at_k
from index.store import Store


def exact_top(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    return ids[index.search(qn.astype(np.float32), k)[1]]


def noisy(x: np.ndarray, n: int, seed: int = 7) -> np.ndarray:
    """Queries near stored vectors but not in the index (an uploaded photo)."""
    rng = np.random.default_rng(seed)
    q = x[rng.choice(len(x), n, replace=False)] + 0.05 * rng.standard_normal((n, x.shape[1])).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A base of 6,000 clustered 32-d vectors with gaps in their ids, built in shards of 2,000."""
    root = tmp_path_factory.mktemp("ondisk")
    x = clustered(6000, clusters=120, spread=0.5, seed=3)
    ids = np.arange(6000, dtype=np.int64) * 3 + 10
    index = ondisk.build(root, "ondisk.1", ids, lambda part: x[(part - 10) // 3], 0.96, chunk=2000)
    return root, index, x, ids


def test_recall_against_exact_search_and_what_the_base_holds(base):
    root, index, x, ids = base
    assert index.info["recall_at_10"] >= 0.96 and index.ntotal == 6000
    assert sorted(p.name for p in (root / "ondisk.1").iterdir()) == [
        "base.json", "ids.npy", "index.faiss", "lists.ivfdata", "trained.faiss", "vectors.npy"]
    q = noisy(x, 300)
    scores, found = index.search(q, 10)
    assert recall_at_k(found, exact_top(x, ids, q)) >= 0.90
    # re-ranked scores are cosines from the float16 vectors: within float16's rounding of the exact ones
    exact = np.einsum("qd,qkd->qk", q, x[(found - 10) // 3])
    assert np.allclose(scores, exact, atol=2e-3)
    assert (np.diff(scores, axis=1) <= 0).all()
    # codes are far smaller than the float32 vectors they stand for (dim/8 bytes of PQ, plus float16 rows)
    assert index.info["codec"] == "pq" and index.ivf.code_size == DIM // 8
    assert np.allclose(index.reconstruct_batch(ids[:20]), x[:20], atol=2e-3)
    with pytest.raises(RuntimeError):
        index.reconstruct_batch(np.array([11]))  # never stored


@pytest.mark.parametrize("n", [1, 2, 15, ondisk.PQ_MIN - 1])
def test_a_base_of_a_few_vectors_is_built_with_sq8_codes(tmp_path, n):
    """A tiny memory limit puts a handful of photos on disk: PQ cannot train on them, SQ8 can."""
    x = np.random.default_rng(n).normal(size=(n, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(5, 5 + n, dtype=np.int64)
    index = ondisk.build(tmp_path, "ondisk.1", ids, lambda part: x[part - 5], 0.96)
    assert index.info["codec"] == "sq8" and index.ntotal == n
    _, found = index.search(x[:1], min(n, 3))
    assert found[0][0] == ids[0]

def test_removed_ids_never_come_back_and_changes_survive_a_reopen_and_a_compaction(base, tmp_path):
    root, _, x, ids = base
    empty = (np.zeros(0, np.int64), np.zeros((0, DIM), np.float32), np.zeros(0, np.int64))
    index = ondisk.OnDiskIndex(root / "ondisk.1", *empty)  # the base as a store opens it, nothing changed yet
    gone, changed = ids[:300], ids[300:310]
    new_x = clustered(200, clusters=5, seed=9)
    new_ids = np.arange(200, dtype=np.int64) + 100_000
    assert index.remove_ids(gone) == 300
    assert index.remove_ids(changed) == 10
    index.add_with_ids(x[310:320], changed)  # re-embedded (here: the next photos' vectors)
    index.add_with_ids(new_x, new_ids)
    assert index.ntotal == 6000 - 300 + 200
    index.write(root / "vectors.2.ondisk.npz")
    reopened = ondisk.OnDiskIndex.open(root / "vectors.2.ondisk.npz")
    live_ids = np.concatenate([changed, ids[310:], new_ids])
    live_x = np.concatenate([x[310:320], x[310:], new_x])
    for idx in (index, reopened):
        _, found = idx.search(np.concatenate([x[:300], new_x[:20]]), 10)
        assert not np.isin(found, gone).any()
        assert (found[300:, 0] == new_ids[:20]).all()
        assert np.allclose(idx.reconstruct_batch(changed), x[310:320])
    compacted = ondisk.compact(reopened, tmp_path, "ondisk.3", np.sort(live_ids))
    assert compacted.ntotal == len(live_ids) and compacted.delta.ntotal == 0 and len(compacted.removed) == 0
    q = noisy(live_x, 200)
    _, found = compacted.search(q, 10)
    assert not np.isin(found, gone).any()
    assert recall_at_k(found, exact_top(live_x, live_ids, q)) >= 0.90


def test_shards_go_through_the_runner_offered_for_the_index_folder(base, tmp_path):
    """A base and its compaction encode their shards with the runner given, or the one offered for the folder
    (the Ray engine's way in, index/ray_engine.py), and search as the base built with the default runner."""
    root, index, x, ids = base

    class Counting:  # an object: offer_runner holds it weakly
        def __init__(self):
            self.shards = []

        def __call__(self, works):
            self.shards += [len(w.rows) for w in works]
            return ivfshards.run_here(works)

    runner = Counting()
    ivfshards.offer_runner(tmp_path, runner)
    try:
        # 6,000 vectors in shards of 2,500: the last one short; the vectors file read in several chunks
        again = ondisk.build(tmp_path, "ondisk.1", ids, lambda part: x[(part - 10) // 3], 0.96, chunk=2500)
        assert runner.shards == [2500, 2500, 1000]
        assert {k: again.info[k] for k in ("codec", "nlist", "nprobe", "rerank")} == \
            {k: index.info[k] for k in ("codec", "nlist", "nprobe", "rerank")}
        q = noisy(x, 300)
        gt = exact_top(x, ids, q)
        assert abs(recall_at_k(again.search(q, 10)[1], gt) - recall_at_k(index.search(q, 10)[1], gt)) <= 0.01
        new_x = clustered(300, clusters=5, seed=9)
        new_ids = np.arange(300, dtype=np.int64) + 100_000
        again.remove_ids(ids[:100])
        again.add_with_ids(new_x, new_ids)
        live = np.concatenate([ids[100:], new_ids])
        compacted = ondisk.compact(again, tmp_path, "ondisk.2", live, chunk=128)
        assert runner.shards[3:] == [128, 128, 44]  # the delta only: the old codes are copied
        _, found = compacted.search(new_x, 1)  # in the lists now: found as the recall tuned for finds them
        assert np.mean(found[:, 0] == new_ids) >= 0.9 and not np.isin(compacted.search(x[:100], 10)[1], ids[:100]).any()
    finally:
        ivfshards.offer_runner(tmp_path, None)
    ivfshards.offer_runner(tmp_path / "other", Counting())  # held weakly: a runner gone is a runner withdrawn
    assert ivfshards.runner_for(tmp_path / "other") is ivfshards.run_here


# ---------------------------------------------------------------- the store on disk
def test_the_store_moves_on_disk_above_its_memory_limit_and_back_below_half(tmp_path, monkeypatch):
    x = clustered(3000, clusters=60, spread=0.5, seed=5)
    limit = ondisk.ram_bytes(2000, DIM)
    with new_store(tmp_path / "idx", memory_limit=limit) as s:
        ids = s.add(rows_for(1500), x[:1500])
        s.save()
        assert s.index_type == "exact"
        ids = np.concatenate([ids, s.add(rows_for(1500, start=1500), x[1500:])])
        s.save()
        assert s.index_type == "ondisk" and s.manifest["ondisk"]["codec"] in ("pq", "sq8")
    with Store.open(tmp_path / "idx") as s:
        assert s.index_type == "ondisk" and s.count == 3000
        q = noisy(x, 200)
        assert recall_at_k(s.search(q, 10)[1], exact_top(x, ids, q)) >= 0.90
        assert (s.search_by_id(int(ids[5]), 3)[1] != ids[5]).all()
        assert np.allclose(s.get_vectors(ids[:10]), x[:10], atol=2e-3)
        with pytest.raises(KeyError):
            s.get_vectors([999_999])
        assert s.duplicates(threshold=0.9999) == []
    monkeypatch.setattr(ondisk, "COMPACT_FRACTION", 0.05)
    with Store.open(tmp_path / "idx", writable=True) as s:  # new, changed and removed photos
        s.remove(ids[:100])
        s.update(ids[100:110], rows_for(10, start=100), x[2000:2010])
        new = s.add(rows_for(50, start=5000), x[:50])  # copies of the removed photos' vectors, new ids
        s.save()
        base = s.manifest["ondisk"]["base"]
        assert s.count == 2950 and s.manifest["ondisk"]["removed"] == 0  # 160 changes > 5%: a new base
    with Store.open(tmp_path / "idx") as s:
        _, found = s.search(x[:100], 5)
        assert not np.isin(found, ids[:100]).any() and (found[:50, 0] == new).all()
        pairs = s.search(x[2000:2010], 2)[1]  # a changed photo's new vector is found, beside its twin
        assert [set(r) for r in pairs.tolist()] == [{a, b} for a, b in zip(ids[100:110].tolist(), ids[2000:2010].tolist())]
    assert sorted(p.name for p in (tmp_path / "idx").glob("ondisk.*")) == sorted({"ondisk.2", base})
    with Store.open(tmp_path / "idx", writable=True) as s:  # below half the limit: back in memory
        s.remove(s.all_ids()[:2500])
        s.save()
        assert s.index_type == "exact" and s.count == 450
    with Store.open(tmp_path / "idx") as s:
        assert s.index_type == "exact" and (s.search(s.get_vectors(s.all_ids()), 1)[1][:, 0] == s.all_ids()).all()


_KILLER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {repo!r})
    import index.store as store
    import index.ondisk as ondisk
    stage, path, compact = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    ondisk.COMPACT_FRACTION = 0.0 if compact else 1.0
    def step(name):
        if name == stage:
            os.kill(os.getpid(), signal.SIGKILL)
    store._save_step = step
    s = store.Store.open(path, writable=True)
    if not compact:
        s.set_memory_limit(ondisk.ram_bytes(100, {dim}))
    rng = np.random.default_rng(0)
    ids = s.all_ids()
    s.remove(ids[:5])
    s.update(ids[5:6], [{{"size": -1}}], rng.standard_normal((1, {dim})))
    s.add([{{"path": "/new/%d.jpg" % i}} for i in range(20)], rng.standard_normal((20, {dim})))
    s.save()
    print("finished")
""")


@pytest.mark.slow
@pytest.mark.parametrize("compact", [False, True], ids=["into-ondisk", "compaction"])
@pytest.mark.parametrize("stage", ["ondisk_shard_written", "ondisk_merged", "ondisk_base_written", "faiss_written",
                                   "committed"])
def test_killed_while_a_base_is_built_leaves_the_last_generation_searchable(tmp_path, stage, compact):
    x = clustered(600, clusters=20, seed=1)
    limit = ondisk.ram_bytes(100, DIM) if compact else ondisk.ram_bytes(10_000, DIM)
    with new_store(tmp_path / "idx", memory_limit=limit) as s:
        s.add(rows_for(600), x)
        s.save()
        assert s.index_type == ("ondisk" if compact else "exact")
    script = tmp_path / "killer.py"
    script.write_text(_KILLER.format(repo=str(REPO), dim=DIM))
    proc = subprocess.run([sys.executable, str(script), stage, str(tmp_path / "idx"), str(int(compact))],
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    committed = stage == "committed"
    with Store.open(tmp_path / "idx") as s:
        assert s.count == (615 if committed else 600) and s.generation == (2 if committed else 1)
        assert s.index_type == ("ondisk" if compact or committed else "exact")
        all_ids = s.all_ids()
        assert (s.search(s.get_vectors(all_ids[:100]), 1)[1][:, 0] == all_ids[:100]).all()
    with Store.open(tmp_path / "idx", writable=True) as s:  # the next writer carries on and cleans up
        s.add(rows_for(1, start=900), clustered(1))
        s.save()
        assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["generation"] == s.generation
    assert not list((tmp_path / "idx").glob(".ondisk.*.tmp"))


# ---------------------------------------------------------------- the page and the commands on it
@pytest.mark.slow
def test_the_page_and_search_open_an_index_on_disk(tmp_path):
    from gradio_client import Client
    from test_ui import on_free_port

    from app.ui import build_app, launch

    index_dir, by_class = make_index(tmp_path, per_class=10, duplicates=2)
    with Store.open(index_dir, writable=True) as s:
        s.set_memory_limit(1)
        s.save()
        assert s.index_type == "ondisk"
    with Store.open(index_dir) as s:
        first = by_class["circle"][3]
        hits = search.search_id(s, first, k=6)
        assert hits[0].id == first and hits[0].score == pytest.approx(1.0, abs=2e-3)  # float16 vectors
        assert all(h.id in by_class["circle"] for h in hits[1:6])
        copies = by_class[CLASSES[0]]  # make_index's two byte copies of the first photos come last
        assert sorted(map(sorted, s.duplicates(threshold=0.999))) == [[copies[0], copies[-2]], [copies[1], copies[-1]]]
    demo = build_app(index_dir, embedder=ColourEmbedder(), page_size=8)
    _, url, _ = on_free_port(launch, demo, index_dir, prevent_thread_lock=True, quiet=True)
    client = Client(url, verbose=False, download_files=False)
    try:
        gallery, note = client.predict(api_name="/random_photos")
        assert len(gallery) == 8 and "Random" in note
        note = client.predict(0.999, api_name="/duplicates")
        assert "2 group(s)" in (note[-1] if isinstance(note, (list, tuple)) else note)
    finally:
        client.close()
        demo.close()
