"""The Ray engine for `index` (index/ray_engine.py) on a Ray inside the test: the same index as the local engine,
an index on disk whose IVF shards are Ray tasks, a worker node removed mid-job, a killed driver resumed from its
finished shards, Ctrl-C, and the errors a user sees (the last with Ray made unimportable: the local engine must
not need it)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from checkpoints import exported_encoder
from imagegen import make_shapes

from app.cli import main
from index import build
from index.build import build_index
from index.embed import Embedder
from index.ray_engine import SHARD_DIR, RayConfig, RayEngineError
from index.store import Store

ray = pytest.importorskip("ray", reason="the Ray engine's tests need Ray: pip install -e '.[ray]'")

SLOW_PHOTO_S = 0.4  # a decode slowed this much keeps shards in flight long enough to interrupt the job


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, shapes_folder):
    return exported_encoder(tmp_path_factory, check_folder=shapes_folder)[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """24 generated photos in 3 folders, and one file that is not a photo."""
    root = tmp_path_factory.mktemp("ray-photos")
    make_shapes(root, per_class=8)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


@pytest.fixture(scope="module")
def local_index(photos, encoder, tmp_path_factory) -> Path:
    """The local engine's index of `photos`: what the Ray engine must give."""
    index_dir = tmp_path_factory.mktemp("local") / "idx"
    build_index(photos, encoder, index_dir, log=quiet)
    return index_dir


def quiet(*a, **k):
    pass


def slow_also(path, data, image):
    """The index's own `also` (content hash, thumbnail, duplicate signature), slowed down."""
    time.sleep(SLOW_PHOTO_S)
    return build._hash_and_thumb(path, data, image)


def held_in(shards: Path) -> list[str]:
    """The photos the finished shards in `shards` hold (a shard is finished once its manifest is written)."""
    out = []
    for p in shards.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):  # deleted while listed
            out += [photo["path"] for photo in json.loads(p.read_text())["photos"]]
    return out


def saved_generation(index_dir: Path) -> int:
    try:
        return int(json.loads((index_dir / "manifest.json").read_text())["generation"])
    except (OSError, ValueError, KeyError):
        return -1


def contents(index_dir: Path) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """(rows by path, vectors by path) of an index."""
    with Store.open(index_dir) as st:
        ids = st.all_ids()
        rows = st.rows(ids)
        vectors = st.get_vectors(np.asarray([r["id"] for r in rows]))
    assert len({r["path"] for r in rows}) == len(rows)  # a path once
    return {r["path"]: r for r in rows}, {r["path"]: v for r, v in zip(rows, vectors)}


def assert_same_index(index_dir: Path, reference: Path, same_ids: bool = True) -> None:
    """The same photos (each once), rows, thumbnails, bad files and vectors as `reference`."""
    rows, vecs = contents(index_dir)
    ref_rows, ref_vecs = contents(reference)
    assert sorted(rows) == sorted(ref_rows)
    for p, r in rows.items():
        keys = ("id", "sha256", "width", "height", "size") if same_ids else ("sha256", "width", "height", "size")
        assert {k: r[k] for k in keys} == {k: ref_rows[p][k] for k in keys}, p
    # the same encoder on the same pixels: batches of another make-up may round differently in the last bits,
    # so the test asks for the same direction (unit vectors, cosine) to well inside any neighbour's margin
    cos = np.array([float(vecs[p] @ ref_vecs[p]) for p in rows])
    assert cos.min() > 0.9999, cos.min()
    thumbs = sorted(int(p.stem) for p in (index_dir / "thumbs").rglob("*.jpg"))  # thumbs/<id // 1000>/<id>.jpg
    assert thumbs == sorted(r["id"] for r in rows.values())
    bad = [json.loads(line)["path"] for line in (index_dir / "bad_files.jsonl").read_text().splitlines()]
    assert [os.path.basename(p) for p in bad] == ["broken.jpg"]
    assert not (index_dir / SHARD_DIR).exists()  # shards go once the store has saved them


# -------------------------------------------------------------------- errors a user sees (no Ray started)
def test_errors_without_a_traceback(photos, encoder, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "idx")
    # nothing listens there: refused at once, not after ray.init's minutes of retries
    t = time.monotonic()
    assert main(["index", str(photos), "--model", str(encoder), "--out", out, "--ray-address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1:1" in err and "nothing answers there" in err and "Traceback" not in err
    assert time.monotonic() - t < 60
    assert main(["index", str(photos), "--model", str(encoder), "--out", out, "--ray-address", "nonsense"]) == 2
    assert "give auto or HOST:PORT" in capsys.readouterr().err
    assert main(["index", str(photos), "--model", str(encoder), "--out", out, "--engine", "local",
                 "--ray-address", "auto"]) == 2
    assert "--engine ray" in capsys.readouterr().err
    # Ray not installed
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["index", str(photos), "--model", str(encoder), "--out", out, "--engine", "ray"]) == 2
    assert "pip install 'byol-search[ray]'" in capsys.readouterr().err
    # the local engine imports no Ray
    assert main(["index", str(photos), "--model", str(encoder), "--out", out]) == 0


def test_run_takes_the_engine(monkeypatch, tmp_path):
    """`run` hands --engine ray / --ray-address to the index stage (the pipeline's build_index call)."""
    import app.pipeline

    seen = []
    monkeypatch.setattr(app.pipeline, "run", lambda cfg: seen.append(cfg) or {})
    monkeypatch.setattr("app.cli._run_pipeline", lambda call, args: call() and 0)
    assert main(["run", str(tmp_path), "--no-serve", "--ray-address", "auto"]) == 0
    assert main(["run", str(tmp_path), "--no-serve", "--engine", "ray"]) == 0
    assert main(["run", str(tmp_path), "--no-serve"]) == 0
    assert [(c.ray and c.ray.address) for c in seen] == ["auto", None, None] and seen[1].ray is not None


# -------------------------------------------------------------------- a killed driver
_DRIVER = """
import sys, time
from index import build
from index.ray_engine import RayConfig

def slow_also(path, data, image):
    time.sleep({delay})
    return build._hash_and_thumb(path, data, image)

build._hash_and_thumb = slow_also  # pickled by value into the decode tasks (defined in __main__)
build.build_index(sys.argv[1], sys.argv[2], sys.argv[3], ray=RayConfig(shard_size=2), save_every=4, log=print)
"""


@pytest.mark.slow
def test_killed_driver_resumes_from_finished_shards(photos, encoder, local_index, tmp_path):
    """The driver (and the Ray it started) killed mid-job: the next run takes what the finished shards hold
    and embeds only the rest; every photo ends in the index once."""
    index_dir = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER.format(delay=SLOW_PHOTO_S), str(photos), str(encoder),
                             str(index_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    shards = index_dir / SHARD_DIR
    try:
        deadline = time.monotonic() + 120
        # kill once the store has saved and a finished shard holds photos the save did not
        while not (saved_generation(index_dir) >= 1 and set(held_in(shards)) - set(contents(index_dir)[0])) \
                and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
        proc.wait()
    held = held_in(shards)
    saved = set(contents(index_dir)[0])
    assert len(held) == len(set(held)) and 0 < len(saved) + len(held) < 25  # 25 files: killed mid-job
    # a save (every 4 photos) deletes the shards it holds; a kill between the two leaves at most those 4
    assert len(saved & set(held)) <= 4

    with ray_started():
        s = build_index(photos, encoder, index_dir, ray=RayConfig(shard_size=2), log=quiet)
    assert s["from_shards"] == len(set(held) - saved) > 0 and s["added"] == 24 - len(saved) and s["unchanged"] == len(saved)
    assert s["bad"] == 1
    assert_same_index(index_dir, local_index, same_ids=False)


_CLI = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's job has it: the suite may leave it ignored
from index import build

def slow_also(path, data, image):
    time.sleep({delay})
    return build._hash_and_thumb(path, data, image)

build._hash_and_thumb = slow_also
from app.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_ctrl_c_saves_what_is_done(photos, encoder, tmp_path):
    """Ctrl-C (SIGINT to the whole foreground group, as a terminal sends it, Ray's processes included) during
    `index --engine ray`: exit status 130, the photos handed over so far saved, their shards gone."""
    index_dir = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, "-c", _CLI.format(delay=SLOW_PHOTO_S), "index", str(photos), "--model",
                             str(encoder), "--out", str(index_dir), "--engine", "ray"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(held_in(index_dir / SHARD_DIR)) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before Ctrl-C"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and "run the same command again" in out and "Traceback" not in err
    saved = set(contents(index_dir)[0])
    assert 0 < len(saved) < 24 and not saved & set(held_in(index_dir / SHARD_DIR))


# -------------------------------------------------------------------- the same index as the local engine
class ray_started:
    """A Ray of 2 CPUs (and `gpus` logical GPUs) in this process for the block (the engine uses it as it is)."""

    def __init__(self, gpus: int = 0):
        self.gpus = gpus

    def __enter__(self):
        ray.init(num_cpus=2, num_gpus=self.gpus, include_dashboard=False, log_to_driver=False, address="local",
                 logging_level="error")
        return self

    def __exit__(self, *exc):
        ray.shutdown()


@pytest.mark.slow
def test_same_index_as_the_local_engine(photos, encoder, local_index, tmp_path, capsys, caplog):
    """On a Ray that declares a GPU: one encoder session, holding it (onnxruntime runs it on the CPU here)."""
    index_dir = tmp_path / "idx"
    with ray_started(gpus=1), caplog.at_level(logging.INFO, logger="index.ray_engine"):
        assert main(["index", str(photos), "--model", str(encoder), "--out", str(index_dir), "--engine", "ray"]) == 0
        assert "24 added" in capsys.readouterr().out
        assert "2 CPUs, 1 GPUs, 1 encoder sessions" in caplog.text
        assert_same_index(index_dir, local_index)
        # the same search answers
        with Store.open(index_dir) as st, Store.open(local_index) as ref:
            q = ref.get_vectors(ref.all_ids()[:5])
            assert [set(r.tolist()) for r in st.search(q, 5)[1]] == [set(r.tolist()) for r in ref.search(q, 5)[1]]
        # past its memory limit the index goes on disk, its IVF shard encoded as a Ray task
        assert main(["index", str(photos), "--model", str(encoder), "--out", str(tmp_path / "on-disk"),
                     "--engine", "ray", "--memory-limit", "1K"]) == 0
        assert "1 of 1 shards encoded as Ray tasks" in caplog.text
        with Store.open(tmp_path / "on-disk") as st:
            assert st.index_type == "ondisk" and st.count == 24
        # nothing new: nothing to embed, and nothing of Ray needed
        s = build_index(photos, encoder, index_dir, ray=RayConfig(), log=quiet)
        assert (s["unchanged"], s["added"], s["from_shards"]) == (24, 0, 0)
        # an encoder file the sessions cannot open (as on a node without it): a clear error, no traceback
        gone = tmp_path / "gone.onnx"
        shutil.copy(encoder, gone)
        embedder = Embedder(gone)
        gone.unlink()
        with pytest.raises(RayEngineError, match="could not start .*gone.onnx on every node.*no such model file"):
            build_index(photos, gone, tmp_path / "idx2", embedder=embedder, ray=RayConfig(), log=quiet)


# -------------------------------------------------------------------- an index on disk
def test_shards_of_an_index_on_disk_run_as_ray_tasks(tmp_path):
    """A base (IVF shards as one-CPU Ray tasks, merged on the driver) searches as the base built here; a store
    that goes on disk while an engine lives builds its base with the engine's runner."""
    from test_ondisk import exact_top, noisy
    from test_store import DIM, clustered, new_store, rows_for

    from index import ivfshards, ondisk
    from index.ivf import recall_at_k
    from index.ray_engine import ShardRunner

    x = clustered(6000, clusters=120, spread=0.5, seed=3)
    ids = np.arange(6000, dtype=np.int64)
    here = ondisk.build(tmp_path / "here", "ondisk.1", ids, lambda part: x[part], 0.96, chunk=2000)
    with ray_started():
        runner = ShardRunner(None)
        on_ray = ondisk.build(tmp_path / "ray", "ondisk.1", ids, lambda part: x[part], 0.96, chunk=2000, runner=runner)
        assert runner.on_cluster == 3
        q = noisy(x, 300)
        gt = exact_top(x, ids, q)
        assert abs(recall_at_k(on_ray.search(q, 10)[1], gt) - recall_at_k(here.search(q, 10)[1], gt)) <= 0.01
        assert on_ray.info["nprobe"] == here.info["nprobe"] and on_ray.info["rerank"] == here.info["rerank"]
        # the store's own save, with the runner offered as RayEngine offers it
        offered = ShardRunner(None)
        ivfshards.offer_runner(tmp_path / "idx", offered)
        try:
            with new_store(tmp_path / "idx", memory_limit=ondisk.ram_bytes(1000, DIM)) as s:
                s.add(rows_for(1500), x[:1500])
                s.save()
                assert s.index_type == "ondisk" and offered.on_cluster == 1
        finally:
            ivfshards.offer_runner(tmp_path / "idx", None)


# -------------------------------------------------------------------- a worker node lost mid-job
@pytest.mark.slow
def test_worker_node_removed_mid_job(photos, encoder, local_index, tmp_path):
    """3 one-CPU nodes, 3 encoder sessions spread over them; the node of one session is removed while shards are
    in flight:
    the job completes with every photo once (actors restart elsewhere, tasks are retried)."""
    from ray.cluster_utils import Cluster

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # slow_also, for the workers
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    index_dir = tmp_path / "idx"
    try:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="error")
        cluster.wait_for_nodes()
        removed: dict[str, object] = {}  # shards finished when the node went, and whether it ran a session

        def remove_a_node():
            shards = index_dir / SHARD_DIR
            while len(list(shards.glob("*.json"))) < 2:
                time.sleep(0.05)
            node, removed["had_session"] = _node_of_an_actor(workers)
            removed["done"] = len(list(shards.glob("*.json")))
            cluster.remove_node(node, allow_graceful=False)
            removed["gone"] = True

        threading.Thread(target=remove_a_node, daemon=True).start()
        real = build._hash_and_thumb
        build._hash_and_thumb = slow_also
        try:
            s = build_index(photos, encoder, index_dir, ray=RayConfig(shard_size=2, actors=3), log=quiet)
        finally:
            build._hash_and_thumb = real
        # removed mid-job: 25 files, a shard each (MIN_SHARDS)
        assert removed.get("gone") and removed["had_session"] and 2 <= removed["done"] < 25, removed
        assert (s["added"], s["bad"], s["count"]) == (24, 1, 24)
        assert_same_index(index_dir, local_index)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _node_of_an_actor(workers):
    """(a worker node (not the head), whether an encoder session runs there): one with a session if any.

    Read from the cluster's own actor table (the GCS: ray.util.state would need the dashboard)."""
    from ray._private.state import actors

    with_actor = {a["Address"]["NodeID"] for a in actors().values()
                  if a["ActorClassName"] == "Encoder" and a["State"] == "ALIVE"}
    node = next((w for w in workers if w.node_id in with_actor), workers[0])
    return node, node.node_id in with_actor
