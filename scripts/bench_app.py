"""Benchmark the page on a 100,000-photo index.

  1. click-to-search, server side: the function a gallery click calls (search from an id, build the gallery
     of thumbnails and captions), side by side with the bare FAISS search it wraps;
  2. the same end to end through gradio_client against `byol-search serve` in another process;
  3. N concurrent gradio_client clients searching for a minute: errors, latency percentiles, throughput;
  4. the page's probe: train on 50 labels (10 per class) and predict all photos, saved to SQLite; the first
     time, every photo's neighbours are found first (byol/neighbours.py, index/neighbours.py);
  5. the photo map (app/photomap.py): draw time (layout + thumbnail atlas + payload), first and second time,
     and as the page does it: prepared in the background from launch, then the first click's draw;
     region select to selection (select_in_box / select_in_polygon on every point, the ids as the browser
     writes them, parsed and checked back on the server);
  6. preview open, end to end on the server (index/preview.py + index/photoinfo.py + 8 nearest neighbours):
     cold (made from a 12-megapixel JPEG original) and cached. The originals are generated once into
     .cache/bench_app_originals and the first --previews photos of the index are pointed at them.

The index is built through the real Store API from synthetic clustered 256-d unit vectors, with small
generated thumbnails (one per cluster, hard-linked per photo), and cached in .cache/bench_app_<n>. Its
encoder (what `byol-search serve` loads and checks against the index's manifest) is an untrained resnet-tiny
exported once with the project's own export (byol/export.py) into .cache/bench_app_encoder/: the page only
needs it for uploads, which the bench does not make; its hash is the one the index is built with.

    .venv/bin/python scripts/bench_app.py                # the full run (about 5 minutes on 2 cores)
    .venv/bin/python scripts/bench_app.py --quick        # 20,000 photos, 10 s of concurrency
    .venv/bin/python scripts/bench_app.py --only-map     # 5 and 6 alone (no server, no probe)
    .venv/bin/python scripts/bench_app.py --only-probe   # 4 alone
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def clustered_unit_vectors(n: int, d: int, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around `clusters` random centres (cosine to the centre ~0.7), and their cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    c = rng.integers(0, clusters, n)
    x = centres[c] + rng.normal(scale=1.0 / np.sqrt(d), size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), c


def bench_encoder(folder: Path) -> tuple[Path, str]:
    """(encoder.onnx, its sha256): an untrained resnet-tiny (32 px) exported once by byol/export.py."""
    from byol.fileio import file_sha256

    onnx_path = folder / "encoder.onnx"
    if not onnx_path.is_file():
        from dataclasses import asdict

        import torch

        from byol.checkpoint import save_checkpoint
        from byol.export import export_onnx
        from byol.model import BYOL, ModelConfig
        from byol.preprocess import Preprocess

        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        cfg = ModelConfig(backbone="resnet-tiny", image_size=32, proj_hidden=64, proj_dim=32)
        ckpt = folder / "checkpoint.pt"
        save_checkpoint(ckpt, {"config": {"epochs": 0}, "model_config": asdict(cfg), "step": 0,
                               "preprocess": Preprocess.for_size(32).to_dict(), "model": BYOL(cfg).state_dict()})
        export_onnx(ckpt, onnx_path, log=lambda *a: None)
    return onnx_path, file_sha256(onnx_path)


def build_bench_index(index_dir: Path, n: int, d: int, clusters: int) -> np.ndarray:
    """Create the index (once, again when the bench encoder changed) and return each photo's cluster, in id order."""
    import json

    from PIL import Image

    from byol.preprocess import Preprocess
    from index.store import Store

    encoder, sha = bench_encoder(ROOT / ".cache" / "bench_app_encoder")
    x, c = clustered_unit_vectors(n, d, clusters)
    manifest = index_dir / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("model_sha256") == sha:
        return c
    shutil.rmtree(index_dir, ignore_errors=True)
    t = time.perf_counter()
    store = Store.create(index_dir, d, sha, encoder, Preprocess().to_dict())
    rng = np.random.default_rng(1)
    rows = [{"path": f"/photos/cluster_{c[i]:03d}/photo_{i:06d}.jpg", "width": 640, "height": 480} for i in range(n)]
    ids = store.add(rows, x)
    protos = []
    for k in range(clusters):  # one small picture per cluster: a colour and a bar at a cluster-specific place
        a = np.full((48, 64, 3), rng.integers(40, 220, 3), np.uint8)
        a[8 + k % 32 : 16 + k % 32, :] = 255 - a[0, 0]
        protos.append(Image.fromarray(a))
    for k in range(clusters):
        store.thumbs.put(int(ids[np.flatnonzero(c == k)[0]]), protos[k])
    first = {k: store.thumbs.path(int(ids[np.flatnonzero(c == k)[0]])) for k in range(clusters)}
    for i, k in zip(ids.tolist(), c.tolist()):
        p = store.thumbs.path(i)
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            os.link(first[k], p)
    store.save()
    print(f"built {n:,}-photo index ({store.index_type}) in {time.perf_counter() - t:.1f} s: {index_dir}")
    store.close()
    return c


def pct(v, q) -> float:
    return float(np.percentile(np.asarray(v) * 1000.0, q))


def bench_server_side(store, reps: int) -> dict:
    """The click handler's work (app.search.search_id + gallery value) against the bare store.search."""
    from app import search
    from app.ui import PAGE, _gallery

    rng = np.random.default_rng(0)
    ids = rng.choice(store.all_ids(), reps)
    ours, ref = [], []
    for i in ids[:20]:  # warm up
        _gallery(search.search_id(store, int(i), PAGE))
    for i in ids:
        t = time.perf_counter()
        _gallery(search.search_id(store, int(i), PAGE))
        ours.append(time.perf_counter() - t)
        q = store.get_vectors([int(i)])
        t = time.perf_counter()
        store.search(q, PAGE)
        ref.append(time.perf_counter() - t)
    return {"ours": ours, "ref": ref}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index_dir: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([str(ROOT / ".venv/bin/byol-search"), "serve", str(index_dir), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


def bench_client(url: str, ids: np.ndarray, reps: int) -> list[float]:
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False)
    out = []
    for j, i in enumerate(ids[: reps + 5]):
        t = time.perf_counter()
        client.predict(int(i), api_name="/search_id")
        if j >= 5:
            out.append(time.perf_counter() - t)
    client.close()
    return out


def bench_browser_protocol(url: str, ids: np.ndarray, reps: int) -> list[float]:
    """What a browser does for a click: join the queue, read the result from the server-sent events stream.

    gradio_client polls its message queue every 50 ms; this does not, so it shows the server's own latency.
    """
    import json

    import httpx

    info = httpx.get(url + "config").json()
    fn_index = next(d["id"] for d in info["dependencies"] if d.get("api_name") == "search_id")
    out = []
    with httpx.Client(timeout=60) as http:
        for j, i in enumerate(ids[: reps + 5]):
            t = time.perf_counter()
            body = {"data": [int(i)], "fn_index": fn_index, "session_hash": f"bench{j % 7}", "event_data": None}
            http.post(url + "gradio_api/queue/join", json=body).raise_for_status()
            with http.stream("GET", url + f"gradio_api/queue/data?session_hash=bench{j % 7}") as events:
                for line in events.iter_lines():
                    if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                        break
            if j >= 5:
                out.append(time.perf_counter() - t)
    return out


def bench_concurrent(url: str, ids: np.ndarray, clients: int, seconds: float) -> dict:
    from gradio_client import Client

    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    conns = [Client(url, verbose=False, download_files=False) for _ in range(clients)]
    start = threading.Barrier(clients)

    def worker(k: int):
        rng = np.random.default_rng(k)
        start.wait()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            try:
                gallery, _ = conns[k].predict(int(rng.choice(ids)), api_name="/search_id")
                if not gallery:
                    raise RuntimeError("empty result")
                with lock:
                    lat.append(time.perf_counter() - t)
            except Exception as e:  # counted, never hidden
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    return {"lat": lat, "errors": errors, "wall": wall}


def bench_probe(store, clusters: np.ndarray, work: Path) -> dict:
    from app.labels import Labels
    from app.probe import Probe

    rng = np.random.default_rng(0)
    all_ids = store.all_ids()
    labels = Labels(work)
    for k in range(5):  # 5 classes x 10 labels = 50
        labels.assign(rng.choice(all_ids[clusters == k], 10, replace=False), f"class_{k}")
    probe = Probe(labels)
    t = time.perf_counter()
    probe.train(store)  # the first training finds every photo's neighbours (once per version of the index)
    first = time.perf_counter() - t
    t = time.perf_counter()
    report = probe.train(store)
    total = time.perf_counter() - t
    preds = labels.predictions(all_ids[:2000])
    truth = {int(i): f"class_{k}" for i, k in zip(all_ids[:2000], clusters[:2000]) if k < 5}
    acc = np.mean([preds[i].label == lab for i, lab in truth.items()]) if truth else float("nan")
    labels.close()
    return {"total": total, "first": first, "predicted": report.predicted, "cv": report.accuracy, "acc": acc}


def print_probe_rows(p: dict) -> None:
    print(f"| {'probe, first time: find the neighbours, train, predict, save':<56} | {p['first'] * 1000:8.0f} | "
          f"{'':>8} | once per version of the index")
    print(f"| {'probe: train on 50 labels + predict all + save':<56} | {p['total'] * 1000:8.0f} | {'':>8} | "
          f"{p['predicted']:,} predicted; cv accuracy {p['cv']:.2f}; accuracy on the labelled classes {p['acc']:.3f}")


def make_originals(folder: Path, n: int, size: tuple[int, int] = (4000, 3000)) -> list[Path]:
    """n 12-megapixel JPEGs (smooth gradients, shapes and grain: a phone photo's entropy), made once."""
    from PIL import Image, ImageDraw

    from byol.fileio import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    w, h = size
    for k in range(n):
        p = folder / f"original_{k:03d}.jpg"
        out.append(p)
        if p.exists():
            continue
        rng = np.random.default_rng(k)
        gx = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        gy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        a = (rng.uniform(40, 200, 3) * (0.6 + 0.4 * gx) * (0.7 + 0.3 * gy)).astype(np.float32)
        a = np.clip(a + rng.normal(0, 6, (h, w, 1)).astype(np.float32), 0, 255).astype(np.uint8)
        img = Image.fromarray(a)
        d = ImageDraw.Draw(img)
        for _ in range(12):
            x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(100, 700)
            d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        atomic_write(p, lambda f, im=img: im.save(f, format="JPEG", quality=90))
    return out


def point_at_originals(index_dir: Path, originals: list[Path]) -> np.ndarray:
    """The first len(originals) ids of the bench index, their rows pointed at real files (once)."""
    from index.store import Store

    with Store.open(index_dir) as store:
        ids = store.all_ids()[: len(originals)]
        if all(r["path"] == str(p) for r, p in zip(store.rows(ids), originals)):
            return ids
    with Store.open(index_dir, writable=True) as store:
        rows = [{"path": str(p), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns, "width": 4000,
                 "height": 3000} for p in originals]
        store.update(ids, rows)
        store.save()
    return ids


def bench_map(store, reps: int) -> dict:
    """Map draw (first and second time), and region select to selection on every point of the map."""
    from app import photomap

    atlas_root = store.index_dir / photomap.ATLAS_DIR
    shutil.rmtree(atlas_root, ignore_errors=True)  # the first draw makes its atlas, as on a new index
    first = photomap.draw(store, max_points=store.count)
    second = photomap.draw(store, max_points=store.count)
    pm = second[0]
    launch = bench_map_after_launch(store)
    rng = np.random.default_rng(0)
    box, lasso = [], []
    sizes = []
    for _ in range(reps):
        x0, y0 = rng.uniform(0, 0.6, 2)
        t = time.perf_counter()
        ids = photomap.select_in_box(pm, x0, y0, x0 + 0.3, y0 + 0.3)
        text = ",".join(map(str, ids.tolist()))  # what the browser writes
        chosen = photomap.parse_ids(text, pm)  # what the handler reads back, checked against the map
        box.append(time.perf_counter() - t)
        sizes.append(len(chosen))
        ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        cx, cy = rng.uniform(0.3, 0.7, 2)
        poly = np.stack([cx + 0.25 * np.cos(ang) * rng.uniform(0.6, 1, 64), cy + 0.25 * np.sin(ang)], 1)
        t = time.perf_counter()
        ids = photomap.select_in_polygon(pm, poly)
        photomap.parse_ids(",".join(map(str, ids.tolist())), pm)
        lasso.append(time.perf_counter() - t)
    return {"first": first[2], "second": second[2], "bytes": len(second[1]), "n": len(pm.ids),
            "thumbs": int((pm.level >= 0).sum()), "box": box, "lasso": lasso, "selected": int(np.median(sizes)),
            **launch}


def bench_map_after_launch(store) -> dict:
    """The page as launched: the default map prepared in the background (Page.start_map, from a cold start:
    no layout in memory, no atlas on disk), then the first "Draw map" click through the page's handler."""
    from app import handlers, photomap
    from app.page import Page

    shutil.rmtree(store.index_dir / photomap.ATLAS_DIR, ignore_errors=True)
    photomap._LAYOUTS.clear()
    page = Page(store.index_dir, store=store, embedder=object())  # no uploads here: no encoder needed
    try:
        t = time.perf_counter()
        page.start_map().join()
        prepared = time.perf_counter() - t
        t = time.perf_counter()
        handlers.draw_map(page, "label", "PCA")
        click = time.perf_counter() - t
    finally:
        page.close()
        page.labels.close()
    return {"prepared_s": prepared, "click_s": click}


def bench_preview(store, ids: np.ndarray, warm_reps: int = 3) -> dict:
    """Preview open on the server: the preview file, the photo's facts and its 8 nearest neighbours."""
    from app import search
    from index.photoinfo import PhotoInfoCache
    from index.preview import PREVIEW_DIR, preview

    shutil.rmtree(store.index_dir / PREVIEW_DIR, ignore_errors=True)
    (store.index_dir / "photo_info.sqlite").unlink(missing_ok=True)

    infos = PhotoInfoCache(store, root="/")

    def open_one(i: int) -> None:
        preview(store, i)
        infos.one(i)
        s, nb = store.search_by_id(i, 8)
        search.hits(store, nb, s)

    cold, warm = [], []
    for i in ids.tolist():
        t = time.perf_counter()
        open_one(i)
        cold.append(time.perf_counter() - t)
    for _ in range(warm_reps):
        for i in ids.tolist():
            t = time.perf_counter()
            open_one(i)
            warm.append(time.perf_counter() - t)
    infos.close()
    return {"cold": cold, "warm": warm}


def print_map_rows(args, m: dict, pv: dict) -> None:
    f, s = m["first"], m["second"]
    print(f"\nphoto map and previews on {m['n']:,} photos ({m['thumbs']:,} as thumbnails), {os.cpu_count()} cores\n")
    print(f"| {'measure':<56} | {'p50 ms':>8} | {'p95 ms':>8} | notes")
    print(f"|{'-' * 58}|{'-' * 10}|{'-' * 10}|------")
    for name, t in (("map draw, first time (makes the atlas)", f), ("map draw, second time (atlas cached)", s)):
        print(f"| {name:<56} | {t.total_s * 1000:8.0f} | {'':>8} | layout {t.layout_s * 1000:.0f} ms, atlas "
              f"{t.atlas_s * 1000:.0f} ms, payload {t.payload_s * 1000:.0f} ms ({m['bytes'] / 1e6:.1f} MB); goal < 3000")
    print(f"| {'map prepared in the background from launch (cold)':<56} | {m['prepared_s'] * 1000:8.0f} | {'':>8} | "
          "layout + atlas, Page.start_map")
    print(f"| {'map draw, first click after launch (map prepared)':<56} | {m['click_s'] * 1000:8.0f} | {'':>8} | "
          "the page's draw_map handler; goal < 3000")
    print(f"| {'region select to selection: box':<56} | {pct(m['box'], 50):8.1f} | {pct(m['box'], 95):8.1f} | "
          f"median {m['selected']:,} photos selected; goal < 500")
    print(f"| {'region select to selection: 64-point lasso':<56} | {pct(m['lasso'], 50):8.1f} | "
          f"{pct(m['lasso'], 95):8.1f} |")
    print(f"| {'preview open, cold (12 MP JPEG original)':<56} | {pct(pv['cold'], 50):8.1f} | "
          f"{pct(pv['cold'], 95):8.1f} | {len(pv['cold'])} photos; preview + facts + 8 neighbours; goal p95 < 300")
    print(f"| {'preview open, cached':<56} | {pct(pv['warm'], 50):8.1f} | {pct(pv['warm'], 95):8.1f} | "
          f"{len(pv['warm'])} opens")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="photos in the index (default 100000)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--clusters", type=int, default=100)
    ap.add_argument("--clients", type=int, default=20, help="concurrent gradio_client clients (default 20)")
    ap.add_argument("--seconds", type=float, default=60, help="length of the concurrent run (default 60)")
    ap.add_argument("--reps", type=int, default=300, help="sequential searches timed (default 300)")
    ap.add_argument("--quick", action="store_true", help="20,000 photos, 10 s of concurrency, 100 searches")
    ap.add_argument("--previews", type=int, default=30, help="12 MP originals for the preview timings (default 30)")
    ap.add_argument("--only-map", action="store_true", help="only the photo map and preview measures")
    ap.add_argument("--only-probe", action="store_true", help="only the probe (4.)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.seconds, args.reps, args.previews = 20_000, 10, 100, 12
    from index.store import Store

    index_dir = ROOT / ".cache" / f"bench_app_{args.n}_{args.dim}"
    clusters = build_bench_index(index_dir, args.n, args.dim, args.clusters)
    if args.only_probe:
        with Store.open(index_dir) as store, tempfile.TemporaryDirectory() as work:
            p = bench_probe(store, clusters, Path(work))
            print(f"probe on {args.n:,} photos ({store.index_type} index), {os.cpu_count()} cores")
        print_probe_rows(p)
        return 0
    preview_ids = point_at_originals(index_dir, make_originals(ROOT / ".cache" / "bench_app_originals", args.previews))
    with Store.open(index_dir) as store:
        m = bench_map(store, min(args.reps, 50))
        pv = bench_preview(store, preview_ids)
    if args.only_map:
        print_map_rows(args, m, pv)
        return 0
    rows = []
    with Store.open(index_dir) as store:
        kind = store.index_type
        s = bench_server_side(store, args.reps)
        rows.append(("click-to-search, server side (search_id + gallery)", pct(s["ours"], 50), pct(s["ours"], 95),
                     f"{np.median(s['ours']) / np.median(s['ref']):.2f}x store.search"))
        rows.append((f"  reference: store.search alone ({kind})", pct(s["ref"], 50), pct(s["ref"], 95), ""))
        with tempfile.TemporaryDirectory() as work:
            p = bench_probe(store, clusters, Path(work))
        ids = store.all_ids()
    con = {"lat": [], "errors": [], "wall": 1.0}
    try:
        proc, url = start_server(index_dir)
    except RuntimeError as e:
        print(f"end-to-end measures skipped: {e}".strip())
        proc = None
    if proc is not None:
        try:
            raw = bench_browser_protocol(url, ids, args.reps)
            rows.append(("click-to-search, end to end (browser protocol, 1 client)", pct(raw, 50), pct(raw, 95), ""))
            seq = bench_client(url, ids, args.reps)
            rows.append(("click-to-search, end to end (gradio_client, 1 client)", pct(seq, 50), pct(seq, 95),
                         "the client polls its messages every 50 ms"))
            con = bench_concurrent(url, ids, args.clients, args.seconds)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        rows.append((f"{args.clients} concurrent clients, {args.seconds:.0f} s", pct(con["lat"], 50),
                     pct(con["lat"], 95), f"{len(con['lat'])} searches, {len(con['lat']) / con['wall']:.1f}/s, "
                     f"{len(con['errors'])} errors"))
    print(f"\nbyol-search page on {args.n:,} photos ({args.dim}-d, {kind} index), {os.cpu_count()} cores\n")
    print(f"| {'measure':<56} | {'p50 ms':>8} | {'p95 ms':>8} | notes")
    print(f"|{'-' * 58}|{'-' * 10}|{'-' * 10}|------")
    for name, p50, p95, note in rows:
        print(f"| {name:<56} | {p50:8.1f} | {p95:8.1f} | {note}")
    print_probe_rows(p)
    if con["errors"]:
        print("errors (first 5):", *con["errors"][:5], sep="\n  ")
    print_map_rows(args, m, pv)
    print("\ncommand: .venv/bin/python scripts/bench_app.py" + " ".join(
        f" --{k} {v}" for k, v in (("n", args.n), ("clients", args.clients), ("seconds", args.seconds))
        if not args.quick) + (" --quick" if args.quick else ""))
    return 1 if con["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
