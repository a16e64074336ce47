"""The index on disk at scale: build time and memory, single-query latency at the tuned recall, cold queries.

Generates N clustered 256-d unit vectors (as scripts/bench_index.py makes them: themes, clusters, points) one
shard at a time, never all in memory, and builds index/ondisk.py's base over them with the store's own
code (vectors file, quantizers trained on a sample, IVF shards merged into one lists file, nprobe and
re-ranking tuned against exact search). Each stage runs in its own process so its peak RSS is its own:

  build   ondisk.build: seconds, peak RSS, bytes per vector on disk, the tuned codec / nprobe / rerank
  exact   ground truth: each held-out query's exact top-10, streamed over the float16 vectors file
  serve   open the base (the page's start cost for the index); single queries after the base's pages are
          dropped from the page cache (posix_fadvise DONTNEED): the first ones, and p50 / p95 of all (cold);
          then the base read once (a server that has run a while holds it in the page cache) and the same
          queries again: p50 / p95 (warm); recall@10 against exact search; peak RSS of the serving process
          (it counts the pages of the mapped lists and ids that queries touched; vectors are read, not mapped)

    nice -n 5 .venv/bin/python scripts/bench_scale.py --n 1000000 --dir .cache/scale-1m

With --page (after the stages above, on the same --dir): the page over that base. A store is made around it
once (index/store.py's tables with one row per vector, the base as its generation 1; thumbnails are left out,
so the map's sheets are grey), then, in a process of its own:

  page    app.page.Page opened (seconds, RSS), a click-to-search (app.handlers.results.search_id: search and
          gallery) p50 / p95, the default map prepared as from launch and its first draw, the folder
          filter's choices, Train on 50 labels (5 kinds x 10: the probe fitted and every photo predicted into
          SQLite), label-next; the process's peak RSS; then `byol-search serve` started until it answers

    .venv/bin/python scripts/bench_scale.py --n 10000000 --dir .cache/scale-10m --page

With --compact N (after the stages): a new base from that base plus N new vectors in its delta, as the store
writes one each time its delta passes a tenth of the base: seconds, peak RSS, the tuning it ends with.

With --engines FOLDER (real photos), the Ray engine of `index` (index/ray_engine.py) against the local engine,
side by side in one run, each building a fresh index of the same photos with the same encoder:

  local   build_index on this machine's threads: seconds, photos/s while embedding (run before and after ray,
          the photos read once beforehand so that every run finds them in the page cache)
  ray     build_index on a Ray of this machine's cores, started before the run (the photos/s a standing
          cluster gives) and timed on its own (what `index --engine ray` adds when it starts Ray itself)
  cluster a simulated cluster of 3 one-CPU nodes (ray.cluster_utils.Cluster, 2 encoder sessions) on
          --cluster-folder: once whole, once with a worker node (one with an encoder session when there is
          one) removed when half the shards are done;
          photos lost or doubled against the folder, and the seconds the loss cost

    nice -n 5 .venv/bin/python scripts/bench_scale.py --engines .cache/imagenette --model ENCODER.onnx \
        --cluster-folder .cache/imagenette/val --dir .cache/scale-engines
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from index import ondisk  # noqa: E402
from index.ivf import recall_at_k  # noqa: E402
from index.vectorfile import VectorFile  # noqa: E402

D, GROUPS, SPREAD = 256, 1000, (1.0, 1.45)  # bench_index.py's defaults: a query's 10th neighbour at cosine ~0.37


def centres(n: int) -> np.ndarray:
    """The cluster centres (about 50 points each), the same in every process."""
    rng = np.random.default_rng(0)
    themes = _unit(rng.standard_normal((GROUPS, D), dtype=np.float32))
    k = max(1, n // 50)
    noise = rng.standard_normal((k, D), dtype=np.float32) * np.float32(SPREAD[0] / np.sqrt(D))
    return _unit(themes[rng.integers(0, GROUPS, k)] + noise)


def points(c: np.ndarray, m: int, seed: list[int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = c[rng.integers(0, len(c), m)] + rng.standard_normal((m, D), dtype=np.float32) * np.float32(SPREAD[1] / np.sqrt(D))
    return _unit(x)


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -------------------------------------------------------------------- stages, each in its own process
def stage_build(n: int, out: Path) -> dict:
    c = centres(n)

    def fetch(ids: np.ndarray) -> np.ndarray:  # a shard of consecutive ids, generated from its first id
        return points(c, len(ids), [1, int(ids[0])])

    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    index = ondisk.build(out, "ondisk.1", np.arange(n, dtype=np.int64), fetch, target_recall=0.96)
    seconds = time.perf_counter() - t
    files = sum(p.stat().st_size for p in index.base_dir.iterdir())
    return {"build_s": round(seconds, 1), "build_peak_rss_mb": round(peak_rss_mb()), **index.describe(),
            "disk_bytes": files, "lists_bytes_per_vector": round((index.base_dir / "lists.ivfdata").stat().st_size / n, 1)}


def stage_exact(n: int, out: Path, queries: int) -> dict:
    q = points(centres(n), queries, [2])
    vectors = VectorFile(out / "ondisk.1" / "vectors.npy")
    t = time.perf_counter()
    gt = ondisk._exact_top(q, np.arange(n, dtype=np.int64), vectors, 10)
    np.save(out / "exact.npy", gt)
    return {"exact_s": round(time.perf_counter() - t, 1)}


def stage_serve(n: int, out: Path, queries: int, cold: int) -> dict:
    base = out / "ondisk.1"
    for p in base.iterdir():  # drop the base's pages: the first queries read from the disk
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    t = time.perf_counter()
    empty = (np.zeros(0, np.int64), np.zeros((0, D), np.float32), np.zeros(0, np.int64))
    index = ondisk.OnDiskIndex(base, *empty)
    open_s = time.perf_counter() - t
    q = points(centres(n), queries, [2])
    faiss.omp_set_num_threads(1)  # as Store.search for single queries

    def one_by_one() -> tuple[list[float], np.ndarray]:
        times, found = [], []
        for i in range(len(q)):
            t = time.perf_counter()
            found.append(index.search(q[i:i + 1], 10)[1][0])
            times.append((time.perf_counter() - t) * 1e3)
        return times, np.stack(found)

    cold_times, found = one_by_one()  # every query's rows read from the disk: random 512-byte rows
    t = time.perf_counter()
    for p in base.iterdir():  # a server that has run a while: the base in the page cache (read once, here)
        with open(p, "rb") as f:
            while f.read(2**24):
                pass
    warm_read_s = time.perf_counter() - t
    times, _ = one_by_one()
    gt = np.load(out / "exact.npy")
    return {"open_s": round(open_s, 3), "cold_first_ms": [round(x, 1) for x in cold_times[:cold]],
            "cold_p50_ms": round(float(np.percentile(cold_times, 50)), 2),
            "cold_p95_ms": round(float(np.percentile(cold_times, 95)), 2), "warm_read_s": round(warm_read_s, 1),
            "p50_ms": round(float(np.percentile(times, 50)), 2), "p95_ms": round(float(np.percentile(times, 95)), 2),
            "recall_at_10": round(recall_at_k(found, gt, 10), 4), "serve_peak_rss_mb": round(peak_rss_mb())}


# -------------------------------------------------------------------- the Ray engine against the local one
def engines(folder: Path, model: Path, out: Path) -> dict:
    import ray

    from byol.data import scan_folder
    from index.build import build_index
    from index.ray_engine import RayConfig

    for p in scan_folder(folder):  # every run reads the photos from the page cache, the first as the others
        p.read_bytes()
    res: dict = {}
    for name in ("local", "ray", "local2"):  # local on both sides of ray: the machine's drift shows
        shutil.rmtree(out / name, ignore_errors=True)
        cfg = None
        if name == "ray":
            t = time.perf_counter()
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     logging_level="error")
            res["ray_start_s"] = round(time.perf_counter() - t, 1)
            cfg = RayConfig()
        t = time.perf_counter()
        s = build_index(folder, model, out / name, log=lambda *a: None, ray=cfg)
        res[f"{name}_s"] = round(time.perf_counter() - t, 1)
        res[f"{name}_photos_per_s"] = round(s["embed_rate"], 1)
        res["photos"], res["bad"] = s["added"], s["bad"]
        if name == "ray":
            ray.shutdown()
        print(name, json.dumps(res), flush=True)
    local = (res["local_photos_per_s"] + res["local2_photos_per_s"]) / 2
    res["ratio"] = round(res["ray_photos_per_s"] / local, 3)
    n = res["photos"]
    res["ratio_with_ray_start"] = round(n / (n / res["ray_photos_per_s"] + res["ray_start_s"]) / local, 3)
    return res


def cluster_run(folder: Path, model: Path, out: Path, remove_node: bool) -> dict:
    """One build on 3 one-CPU nodes; with `remove_node`, a worker node goes when half the shards are done."""
    import threading

    import ray
    from ray._private.state import actors
    from ray.cluster_utils import Cluster

    from byol.data import scan_folder
    from index.build import build_index
    from index.ray_engine import MIN_SHARDS, RayConfig
    from index.store import Store

    shutil.rmtree(out, ignore_errors=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False, logging_level="error")
    cluster.wait_for_nodes()
    photos = sorted(str(p.absolute()) for p in scan_folder(folder))
    shards = -(-len(photos) // max(1, min(1000, -(-len(photos) // MIN_SHARDS))))
    res: dict = {"shards": shards}

    def remove() -> None:
        while len(list((out / "shards").glob("*.json"))) < shards // 2:
            time.sleep(0.05)
        with_actor = {a["Address"]["NodeID"] for a in actors().values() if a["ActorClassName"] == "Encoder"}
        node = next((w for w in workers if w.node_id in with_actor), workers[0])
        res.update(removed_at_s=round(time.perf_counter() - t, 1), removed_node_had_session=node.node_id in with_actor,
                   shards_done_when_removed=len(list((out / "shards").glob("*.json"))))
        cluster.remove_node(node, allow_graceful=False)

    try:
        if remove_node:
            threading.Thread(target=remove, daemon=True).start()
        t = time.perf_counter()
        # two encoder sessions (the default for 3 CPUs is one): the removed node is then likelier to hold one
        s = build_index(folder, model, out, log=lambda *a: None, ray=RayConfig(actors=2))
        res["s"] = round(time.perf_counter() - t, 1)
    finally:
        ray.shutdown()
        cluster.shutdown()
    with Store.open(out) as st:
        paths = [r["path"] for r in st.rows(st.all_ids())]
    indexed = set(paths) | {p for p in photos if p in {b["path"] for b in s["bad_files"]}}
    res.update(photos=len(photos), indexed=len(paths), bad=s["bad"], lost=len(set(photos) - indexed),
               doubled=len(paths) - len(set(paths)))
    return res


def run_stage(*argv: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout + proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def page_store(n: int, out: Path) -> Path:
    """`out` made into a store around its base (once): one images row per vector id, the base as generation 1,
    built with the bench encoder of scripts/bench_app.py (the page loads it and checks its hash)."""
    from bench_app import bench_encoder

    from byol.preprocess import Preprocess
    from index import database
    from index.store import Store

    encoder, sha = bench_encoder(ROOT / ".cache" / "bench_app_encoder")
    if (out / "meta.sqlite").is_file():
        return out
    t = time.perf_counter()
    Store.create(out, D, sha, encoder, Preprocess().to_dict()).close()
    base = ondisk.OnDiskIndex(out / "ondisk.1", np.zeros(0, np.int64), np.zeros((0, D), np.float32), np.zeros(0, np.int64))
    base.write(out / ondisk.generation_file(1))
    conn = database.connect(out / "meta.sqlite", durable=True)
    now = time.time()
    rows = ((i, f"/photos/{i // 100_000:03d}/{i // 10_000 % 10}/{i:08d}.jpg", 2_000_000 + i % 9973,
             1_700_000_000_000_000_000 + i, f"{i:064x}", 4000, 3000, now) for i in range(n))
    with database.transaction(conn):
        conn.executemany("INSERT INTO images(id, path, size, mtime_ns, sha256, width, height, added_at) "
                         "VALUES (?,?,?,?,?,?,?,?)", rows)
        meta = {"generation": "1", "vectors_file": ondisk.generation_file(1), "index_type": "ondisk",
                "nprobe": str(base.nprobe), "trained_on": str(base.info["trained_on"])}
        conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", meta.items())
    conn.close()
    Store.open(out, writable=True).close()  # the manifest brought up to generation 1
    print(f"store made around the base in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def stage_page(n: int, out: Path) -> dict:
    from bench_app import start_server

    from app.handlers import filtering, labelling, map_view, results
    from app.page import Page

    res: dict = {}
    t = time.perf_counter()
    page = Page(out)
    res["page_open_s"] = round(time.perf_counter() - t, 2)
    res["page_open_rss_mb"] = round(peak_rss_mb())
    rng = np.random.default_rng(0)
    ids = page.store.all_ids()
    times = []
    for i in rng.choice(ids, 60, replace=False).tolist():
        t = time.perf_counter()
        results.search_id(page, int(i), 48)
        times.append((time.perf_counter() - t) * 1e3)
    res["click_search_p50_ms"] = round(float(np.percentile(times[10:], 50)), 1)
    res["click_search_p95_ms"] = round(float(np.percentile(times[10:], 95)), 1)
    t = time.perf_counter()
    page.start_map().join()
    res["map_prepared_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    map_view.draw_map(page, "label", "PCA")
    res["map_first_draw_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    res["folder_choices"] = len(filtering.folders(page))
    res["folder_choices_s"] = round(time.perf_counter() - t, 1)
    for k in range(5):
        page.labels.assign(rng.choice(ids, 10, replace=False), f"kind_{k}")
    t = time.perf_counter()
    report = labelling.train(page)
    res["train_s"] = round(time.perf_counter() - t, 1)
    res["train_report"] = report[0][:300]
    t = time.perf_counter()
    labelling.label_next(page, 48)
    res["label_next_s"] = round(time.perf_counter() - t, 2)
    res["page_peak_rss_mb"] = round(peak_rss_mb())
    page.close()
    page.labels.close()
    t = time.perf_counter()
    proc, _ = start_server(out)
    res["serve_start_s"] = round(time.perf_counter() - t, 1)
    proc.terminate()
    proc.wait(30)
    return res


def stage_compact(n: int, out: Path, extra: int) -> dict:
    """A new base written from the base in `out` with `extra` new vectors in its delta: what the store does
    each time its delta passes a tenth of the base (index/ondisk.py compact: the vectors file copied in id
    order, the delta encoded, the old codes copied into the new lists, the tuning run again)."""
    new_ids = np.arange(n, n + extra, dtype=np.int64)
    old = ondisk.OnDiskIndex(out / "ondisk.1", new_ids, points(centres(n), extra, [3]), np.zeros(0, np.int64))
    t = time.perf_counter()
    index = ondisk.compact(old, out, "ondisk.compacted", np.arange(n + extra, dtype=np.int64))
    seconds = time.perf_counter() - t
    info = index.describe()
    shutil.rmtree(out / "ondisk.compacted")  # the bench folder as it was
    return {"compact_extra": extra, "compact_s": round(seconds, 1), "compact_peak_rss_mb": round(peak_rss_mb()),
            "compact_nprobe": info["nprobe"], "compact_rerank": info["rerank"],
            "compact_recall_at_10": info["recall_at_10"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors (default 1,000,000)")
    ap.add_argument("--dir", type=Path, default=Path(".cache/scale"), help="where the base is built")
    ap.add_argument("--queries", type=int, default=300, help="held-out single queries (default 300)")
    ap.add_argument("--cold", type=int, default=10, help="first queries reported as cold (default 10)")
    ap.add_argument("--engines", metavar="FOLDER", type=Path, help="compare the Ray engine with the local one on FOLDER")
    ap.add_argument("--model", metavar="ENCODER.onnx", type=Path, help="the encoder for --engines")
    ap.add_argument("--cluster-folder", metavar="FOLDER", type=Path, help="the simulated cluster's photos (--engines)")
    ap.add_argument("--page", action="store_true", help="the page over the base built in --dir (after the stages)")
    ap.add_argument("--compact", type=int, metavar="N", help="a new base from the one in --dir plus N new vectors "
                    "(what the store does when its delta passes a tenth of the base)")
    ap.add_argument("--stage", choices=("build", "exact", "serve", "page", "compact"), help=argparse.SUPPRESS)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    if args.stage:
        stage = {"build": lambda: stage_build(args.n, args.dir), "exact": lambda: stage_exact(args.n, args.dir, args.queries),
                 "serve": lambda: stage_serve(args.n, args.dir, args.queries, args.cold),
                 "page": lambda: stage_page(args.n, args.dir),
                 "compact": lambda: stage_compact(args.n, args.dir, args.compact)}[args.stage]
        print(json.dumps(stage()))
        return
    if args.engines:
        res = {"folder": str(args.engines), "model": str(args.model), "cores": os.cpu_count()}
        res.update(engines(args.engines, args.model, args.dir))
        print("engines", json.dumps(res), flush=True)
        if args.cluster_folder:
            for removed in (False, True):
                r = cluster_run(args.cluster_folder, args.model, args.dir / "cluster", removed)
                res["cluster_node_removed" if removed else "cluster_whole"] = r
                print("cluster", json.dumps(r), flush=True)
            res["cluster_seconds_lost"] = round(res["cluster_node_removed"]["s"] - res["cluster_whole"]["s"], 1)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        return
    common = ["--n", str(args.n), "--dir", str(args.dir), "--queries", str(args.queries), "--cold", str(args.cold)]
    if args.compact:
        res = {"n": args.n, **run_stage(*common, "--compact", str(args.compact), "--stage", "compact")}
        print("compact", json.dumps(res), flush=True)
        return
    if args.page:
        page_store(args.n, args.dir)
        res = {"n": args.n, **run_stage(*common, "--stage", "page")}
        print("page", json.dumps(res), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        return
    print(f"{args.n:,} x {D} clustered unit vectors, faiss {faiss.__version__}, {os.cpu_count()} cores", flush=True)
    res = {"n": args.n}
    for stage in ("build", "exact", "serve"):
        res.update(run_stage(*common, "--stage", stage))
        print(stage, json.dumps({k: v for k, v in res.items()}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
