"""The reliability promises, one test each (the docstrings state them); scripts/bench_reliability.py runs
the same scenarios at a larger size for BENCHMARKS.md.

- Bad inputs never crash anything: file names that are not UTF-8, EPS files, decompression bombs, huge
  16-bit PNGs, truncated, empty and non-image files, FIFOs and folders named like photos. Each one is either
  read correctly or named in a report with its reason, by the folder scan, the decoded cache, the index and
  the page's upload decoding alike.
- kill -9 during any save (checkpoint, index, labels, export), again and again, leaves every artifact
  loadable and loses nothing that was reported saved.
- `index` saving beside the page while 20 clients read: no request fails.
- Rebuilding an index (another encoder, a broken index, an index deleted and built again in another order)
  loses no label and attaches none to another photo.

The kill scenarios run in one subprocess (`python tests/test_reliability.py kills ...`) that imports
everything once and forks a worker per round: the worker saves in a loop and writes a line to a pipe after
each save it completed; the harness kills it with SIGKILL after a random delay, then opens what the worker
was writing, in a fresh state, and checks it against the last save the worker reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).parent)]

from imagegen import make_hazards, shape_image  # noqa: E402

KINDS = ("checkpoint", "index", "labels", "export")
DIM = 16


# ====================================================================================== bad inputs
def make_bad_inputs(root: Path, big_side: int = 3000) -> dict[str, bool]:
    """The hazards of tests/imagegen.py plus the ones issue 11 found; {file name: should it load}."""
    import io

    from PIL import Image

    expect = make_hazards(root)
    rng = np.random.default_rng(0)
    shape_image("circle", rng, (48, 40)).save(root / os.fsdecode(b"caf\xe9.jpg"))  # not UTF-8, fine photo
    expect[os.fsdecode(b"caf\xe9.jpg")] = True
    (root / os.fsdecode(b"bad\xff\xfe.jpg")).write_bytes(b"\xff\xd8 not really a jpeg")
    expect[os.fsdecode(b"bad\xff\xfe.jpg")] = False
    eps = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(eps, format="EPS")
    (root / "drawing.jpg").write_bytes(eps.getvalue())  # PostScript named like a photo
    expect["drawing.jpg"] = False
    (root / "drawing.eps").write_bytes(eps.getvalue())  # not a photo extension: never even read
    a = np.add.outer(np.arange(big_side, dtype=np.uint32) * 13, np.arange(big_side, dtype=np.uint32) * 7)
    Image.fromarray((a % 65536).astype(np.uint16)).save(root / "huge16.png")  # 16-bit grey, 9 MP by default
    expect["huge16.png"] = True
    (root / "zero.png").write_bytes(b"")
    expect["zero.png"] = False
    (root / "folder.jpg").mkdir()  # a folder named like a photo: not a file, not scanned
    os.mkfifo(root / "pipe.jpg")  # a FIFO would block a naive open() forever: not scanned
    (root / "loop").mkdir()
    (root / "loop" / "back").symlink_to(root, target_is_directory=True)
    return expect


def bad_input_run(root: Path, model: Path, work: Path) -> dict:
    """Scan, cache, index (twice) and decode-as-upload every file of `root`; returns tried / crashes / wrong."""
    from app.search import load_query
    from byol.data import ImageCache, scan_folder
    from byol.images import BadImage
    from index.build import build_index

    expect = make_bad_inputs(root)
    out = {"tried": 0, "crashes": 0, "wrong": []}

    def attempt(what, fn):
        out["tried"] += 1
        try:
            return fn()
        except Exception as e:  # any exception escaping here is a crash
            out["crashes"] += 1
            out["wrong"].append(f"{what}: {type(e).__name__}: {e}"[:300])

    found = attempt("scan", lambda: scan_folder(root)) or []
    names = {p.name for p in found}
    for name, ok in expect.items():
        def upload(name=name, ok=ok):
            try:
                load_query((root / name).read_bytes())
                loaded = True
            except BadImage:
                loaded = False
            if loaded != ok:
                out["wrong"].append(f"upload {ascii(name)}: loaded={loaded}")
        attempt(f"upload {ascii(name)}", upload)
    cache = attempt("cache", lambda: ImageCache.build(root, work / "cache", side=16, workers=2))
    if cache is not None and {Path(p).name for p in cache.paths} != {n for n, ok in expect.items() if ok}:
        out["wrong"].append("cache: wrong set of photos")
    for run in range(2):
        s = attempt(f"index run {run}", lambda: build_index(root, model, work / "idx", log=lambda *a: None))
        if s is not None:
            bad = {Path(b["path"]).name for b in s["bad_files"]}
            if s["count"] != sum(expect.values()) or len(bad) != len(expect) - sum(expect.values()):
                out["wrong"].append(f"index run {run}: {s['count']} photos, bad {sorted(bad)}")
            attempt("print report", lambda s=s: [print(b["path"], b["reason"], file=open(os.devnull, "w"))
                                                  for b in s["bad_files"]])
    out["wrong"] += [f"scan found {ascii(n)}" for n in names if n in ("folder.jpg", "pipe.jpg", "drawing.eps")]
    return out


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from checkpoints import exported_encoder

    return exported_encoder(tmp_path_factory)


def test_bad_inputs_never_crash_and_each_is_read_or_reported(encoder, tmp_path):
    """Non-UTF-8 names, EPS, bombs, huge 16-bit PNGs, truncated/empty/text files, FIFOs and folders named
    like photos: the scan, the cache, the index (and its rerun) and the upload decoding never raise; every
    file is read correctly or reported with a reason."""
    out = bad_input_run(tmp_path / "photos", encoder[1], tmp_path)
    assert out["crashes"] == 0 and out["wrong"] == [], out


# ====================================================================================== kill -9 during saves
def _index_with_rows(index_dir: Path, n: int, photos: list[Path] | None = None):
    from index.store import Store

    store = Store.create(index_dir, DIM, "0" * 64, index_dir.parent / "encoder.onnx", {"size": 32})
    rng = np.random.default_rng(0)
    if photos:
        rows = [{"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
                for p in photos]
    else:
        rows = [{"path": f"/photos/{i}.jpg", "sha256": f"{i:064x}"} for i in range(n)]
    store.add(rows, rng.standard_normal((len(rows), DIM)).astype(np.float32))
    store.save()
    store.close()


def _worker(kind: str, d: Path, rnd: int, ack: int) -> None:
    """Save `kind` in a loop, writing one line to fd `ack` after each save completed (never returns)."""
    rng = np.random.default_rng(rnd)

    def done(line: str) -> None:
        os.write(ack, (line + "\n").encode())

    if kind == "checkpoint":
        import torch

        from byol.checkpoint import save_checkpoint

        weights = {"w": torch.randn(64, 64), "b": torch.randn(64)}
        step = 0
        while True:
            step += 1
            save_checkpoint(d / "checkpoint.pt", {"model": weights, "step": step, "round": rnd})
            done(str(step))
    if kind == "index":
        from index.store import Store

        store = Store.open(d / "idx", writable=True)
        while True:
            ids = store.all_ids()
            store.update(ids[:2], [{"size": int(rng.integers(1e9))}] * 2, rng.standard_normal((2, DIM)))
            if len(ids) > 60:
                store.remove(rng.choice(ids[2:], 8, replace=False))
            store.add([{"path": f"/p/{rnd}-{rng.integers(1e12)}.jpg", "sha256": f"{rng.integers(1e12):064x}"}
                       for _ in range(8)], rng.standard_normal((8, DIM)))
            gen = store.save()
            done(f"{gen} {store.count}")
    if kind == "labels":
        from app.labels import Labels

        labels = Labels(d / "lab")
        for i in range(1, 10**9):
            labels.assign([i], f"round-{rnd}")
            if i % 7 == 0:
                labels.create(f"extra-{rnd}-{i}")
            done(str(i))
    if kind == "export":
        from app.exports import export_imagefolder
        from app.labels import Labels
        from index.store import Store

        labels, store = Labels(d / "exp"), Store.open(d / "exp")
        for k in range(10**9):
            export_imagefolder(labels, store, d / "exports" / f"r{rnd}-{k}", copy=k % 3 != 2)
            done(f"r{rnd}-{k}")
    raise AssertionError(kind)


def _setup(kind: str, d: Path) -> None:
    if kind == "index":
        _index_with_rows(d / "idx", 40)
    elif kind == "labels":
        _index_with_rows(d / "lab", 5000)
    elif kind == "export":
        from app.labels import Labels

        photos = d / "photos"
        photos.mkdir(parents=True)
        rng = np.random.default_rng(0)
        paths = []
        for i in range(12):
            paths.append(photos / f"{i:02d}_{'x' * (i * 20)}.png")
            shape_image(("circle", "square")[i % 2], rng, (48, 40)).save(paths[-1])
        _index_with_rows(d / "exp", 0, paths)
        labels = Labels(d / "exp")
        labels.assign(range(1, 13), "a")
        labels.assign(range(1, 13, 3), "b")
        labels.close()


def _check(kind: str, d: Path, acked: list[str], state: dict) -> list[str]:
    """What is wrong with `kind`'s artifacts after a kill (empty: loadable, and nothing reported saved lost)."""
    problems = []
    last = acked[-1] if acked else None
    if kind == "checkpoint":
        from byol.checkpoint import load_checkpoint

        if (d / "checkpoint.pt").exists() or last:
            ckpt = load_checkpoint(d / "checkpoint.pt")
            if last and (ckpt["round"], ckpt["step"]) < (state["round"], int(last)):
                problems.append(f"checkpoint at step {ckpt['step']}, step {last} was reported saved")
    elif kind == "index":
        from index.store import Store

        with Store.open(d / "idx") as s:
            s.get_vectors(s.all_ids())
            if last:
                gen, count = map(int, last.split())
                if s.generation < gen or (s.generation == gen and s.count != count):
                    problems.append(f"index at generation {s.generation}/{s.count}, {gen}/{count} reported saved")
        with Store.open(d / "idx", writable=True):  # and the next writer may carry on
            pass
    elif kind == "labels":
        from app.labels import Labels

        labels = Labels(d / "lab")
        have = labels.labelled()
        missing = [i for i in map(int, acked) if have.get(i) != f"round-{state['round']}"]
        labels.close()
        if missing:
            problems.append(f"{len(missing)} labels reported saved are missing, e.g. {missing[:3]}")
    elif kind == "export":
        from app.exports import remove_stale_exports

        done = set(acked) | state.setdefault("exports", set())
        state["exports"] = done
        checked = state.setdefault("checked", set())
        for folder in (d / "exports").iterdir() if (d / "exports").exists() else []:
            if folder.name.startswith(".") or folder.name in checked:
                continue  # a half-written export, never under its real name (removed by a later export)
            checked.add(folder.name)
            files = list(folder.rglob("*.png"))
            if len(files) != 12 or any(f.stat().st_size == 0 for f in files):
                problems.append(f"export {folder.name} is incomplete ({len(files)} of 12 photos)")
        problems += [f"export {n} reported done is gone" for n in done if not (d / "exports" / n).is_dir()]
        remove_stale_exports(d / "exports", older_than=0)
    return problems


def kill_rounds(kinds, rounds: int, root: Path, max_delay: float = 0.3, seed: int = 0) -> dict:
    """Per kind: `rounds` workers killed with SIGKILL mid-save; returns {kind: {kills, saves, problems}}."""
    rnd = random.Random(seed)
    out = {}
    for kind in kinds:
        d = root / kind
        d.mkdir(parents=True, exist_ok=True)
        _setup(kind, d)
        res, state = {"kills": 0, "saves": 0, "problems": []}, {}
        for r in range(rounds):
            state["round"] = r
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker
                os.close(rfd)
                try:
                    _worker(kind, d, r, wfd)
                except BaseException:
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(1)
            os.close(wfd)
            # kill at a random moment of a save: after the first save completes, a random time later
            first = os.read(rfd, 1 << 16)
            time.sleep(rnd.uniform(0.0, max_delay))
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            chunks = [first]
            while chunk := os.read(rfd, 1 << 16):
                chunks.append(chunk)
            os.close(rfd)
            acked = b"".join(chunks).decode().split()
            if kind == "index":
                acked = [" ".join(acked[i:i + 2]) for i in range(0, len(acked), 2)]
            res["kills"] += os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            res["saves"] += len(acked)
            try:
                res["problems"] += _check(kind, d, acked, state)
            except Exception as e:  # an artifact that does not load
                res["problems"].append(f"round {r}: {type(e).__name__}: {e}"[:300])
        out[kind] = res
    return out


def run_kills(kinds, rounds: int, root: Path, timeout: float = 600) -> dict:
    """kill_rounds in a fresh subprocess (forking from pytest's process, with its threads, is not safe)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__, "kills", ",".join(kinds), str(rounds), str(root)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def kills(tmp_path_factory):
    return run_kills(KINDS, 3, tmp_path_factory.mktemp("kills"))


@pytest.mark.parametrize("kind", KINDS)
def test_kill_9_during_saves_leaves_every_artifact_loadable_and_loses_nothing_saved(kills, kind):
    """kill -9 at random moments of repeated saves of a checkpoint, an index, labels and exports: after
    each kill the artifact loads (the index opens for reading and for writing, checkpoints load, every
    export under its own name is complete) and everything reported saved before the kill is there."""
    res = kills[kind]
    assert res["kills"] == 3 and res["saves"] > 0 and res["problems"] == [], res


@pytest.mark.slow
def test_many_kills(tmp_path):
    """The same promise over 10 more kills of each kind that needs no torch (index, labels, export)."""
    res = run_kills(("index", "labels", "export"), 10, tmp_path)
    assert all(r["problems"] == [] and r["kills"] == 10 for r in res.values()), res


# ====================================================================================== index beside the page
def _writer(index_dir: str, seconds: float) -> None:
    """What `index` does to a store, in a loop: remove, re-embed, add, save (a subprocess, see __main__)."""
    from index.store import Store

    rng = np.random.default_rng(1)
    store = Store.open(index_dir, writable=True)
    end, n = time.time() + seconds, 0
    while time.time() < end:
        ids = store.all_ids()
        store.update(ids[-3:], [{"size": n}] * 3, rng.standard_normal((3, DIM)))
        # the 40 labelled photos stay (so training always has its two labels); the others come and go
        store.remove(rng.choice(ids[40:-3], min(len(ids) - 50, 10), replace=False))
        store.add([{"path": f"/w/{n}-{j}.jpg", "sha256": f"{n * 100 + j + 10**6:064x}"} for j in range(10)],
                  rng.standard_normal((10, DIM)))
        store.save()
        n += 1
    print(n)


def page_beside_index(root: Path, clients: int = 20, seconds: float = 6.0) -> dict:
    """`clients` threads use the page's data layer (app.search, app.labels, the read-only store refreshed as
    the page does) while a writer process saves new generations; returns requests, errors, saves."""
    from app import search
    from app.labels import Labels
    from app.probe import Probe
    from index.store import Store

    index_dir = root / "idx"
    _index_with_rows(index_dir, 80)
    store, labels = Store.open(index_dir), Labels(index_dir)
    labels.assign(store.all_ids()[:40:2], "even")
    labels.assign(store.all_ids()[1:40:2], "odd")
    probe = Probe(labels)
    probe.train(store)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen([sys.executable, __file__, "writer", str(index_dir), str(seconds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    refreshed = [0.0]
    lock = threading.Lock()

    def refresh():  # app.ui.Page.refresh: at most once a second, from whichever request comes
        with lock:
            if time.monotonic() - refreshed[0] > 1.0:
                refreshed[0] = time.monotonic()
                store.refresh()

    def one(op: str, rng: random.Random):
        refresh()
        ids = store.all_ids()
        if op == "search":
            search.search_id(store, int(rng.choice(ids)), 10)
        elif op == "browse":
            hits = search.random_browse(store, 24)
            labels.labels_of(h.id for h in hits)
            labels.predictions(h.id for h in hits)
        elif op == "duplicates":
            search.duplicate_groups(store, 0.5)
        elif op == "map":
            m = search.compute_map(store, "pca", include=list(labels.labelled()))
            search.colour_keys(m.ids, {**labels.predicted_labels(m.ids), **labels.labelled()})
        elif op == "label":
            labels.assign([int(rng.choice(ids))], rng.choice(["even", "odd"]))
        elif op == "predict":
            if probe.last_probe() is not None:
                probe.predict(store)
        elif op == "train":
            probe.train(store)
        elif op == "table":
            sum(1 for _ in labels.table(store))

    counts = {"requests": 0, "errors": 0, "examples": []}
    ops = ["search"] * 6 + ["browse"] * 4 + ["duplicates", "map", "label", "predict", "table"]
    start = threading.Barrier(clients)

    def client(k: int):
        rng = random.Random(k)
        start.wait()
        while writer.poll() is None:
            op = "train" if k == 0 and rng.random() < 0.3 else rng.choice(ops)
            try:
                one(op, rng)
                ok = True
            except Exception as e:
                ok = False
                with lock:
                    counts["examples"].append(f"{op}: {type(e).__name__}: {e}"[:200])
            with lock:
                counts["requests"] += 1
                counts["errors"] += not ok

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out, err = writer.communicate()
    assert writer.returncode == 0, err[-2000:]
    counts["saves"] = int(out.split()[-1])
    counts["examples"] = sorted(set(counts["examples"]))[:5]
    labels.close()
    store.close()
    return counts


def test_index_saving_beside_the_page_gives_no_errors(tmp_path):
    """While `index` saves new generations, 20 clients of the page (search, browse, duplicates, map, label,
    train, predict, export table) get no error: the page reads the rows of the generation it loaded."""
    res = page_beside_index(tmp_path, clients=20, seconds=5.0)
    assert res["saves"] >= 3 and res["requests"] > 40 and res["errors"] == 0, res


# ====================================================================================== rebuilds and labels
def labels_over_rebuilds(root: Path, model: Path, other_model: Path) -> dict:
    """Label photos of two folders, then rebuild the index every way a person can; after each, count the
    labels not on their photo (lost) and the photos carrying a label they were never given (misplaced)."""
    from app.labels import Labels
    from index.build import build_index
    from index.store import Store

    rng = np.random.default_rng(0)
    folders = [root / "photos" / "a", root / "photos" / "b"]
    for f, cls in zip(folders, ("circle", "square")):
        f.mkdir(parents=True)
        for i in range(8):
            shape_image(cls, rng, (48 + i, 40)).save(f / f"{cls}_{i}.png")
    idx = root / "idx"
    quiet = lambda *a, **k: None  # noqa: E731
    for f in folders:
        build_index(f, model, idx, log=quiet)
    labels = Labels(idx)
    with Store.open(idx) as st:
        rows = st.rows(st.all_ids())
    given = {r["sha256"]: f"label-{j % 3}" for j, r in enumerate(rows) if j % 2 == 0}
    by_sha = {r["sha256"]: r["id"] for r in rows}
    for sha, name in given.items():
        labels.assign([by_sha[sha]], name)

    out = {"labels": len(given), "rebuilds": 0, "lost": 0, "misplaced": 0, "steps": []}

    def check(step: str):
        with Store.open(idx) as st:
            now = {r["id"]: r["sha256"] for r in st.rows(st.all_ids())}
        have = labels.labelled()
        lost = sum(1 for sha, name in given.items() if not any(now.get(i) == sha and n == name
                                                                for i, n in have.items()))
        misplaced = sum(1 for i, n in have.items() if given.get(now.get(i)) != n)
        out["rebuilds"] += 1
        out["lost"] += lost
        out["misplaced"] += misplaced
        out["steps"].append((step, lost, misplaced))

    build_index(folders[0], other_model, idx, rebuild=True, log=quiet)  # another encoder, one folder of two
    check("index A --rebuild (another encoder)")
    build_index(folders[1], other_model, idx, log=quiet)
    check("index B after it")
    for p in idx.glob("vectors.*.faiss"):
        p.unlink()
    build_index(folders[0], model, idx, rebuild=True, log=quiet)  # an index that Store.open refuses
    check("--rebuild of an index whose vectors are gone")
    for p in list(idx.iterdir()):  # the index deleted, labels kept; built again, folders in the other order
        if not p.name.startswith("labels.sqlite"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for f in reversed(folders):
        build_index(f, model, idx, log=quiet)
    check("index deleted and built again (ids restart)")
    moved = folders[0] / "moved"
    moved.mkdir()
    for p in sorted(folders[0].glob("*.png"))[:3]:
        p.rename(moved / p.name)
    build_index(folders[0], model, idx, log=quiet)
    check("photos moved")
    labels.close()
    return out


@pytest.fixture(scope="module")
def other_encoder(encoder, tmp_path_factory):
    import onnx

    other = tmp_path_factory.mktemp("other") / "other.onnx"
    proto = onnx.load(str(encoder[1]))
    proto.doc_string += " (another export)"
    onnx.save(proto, other)
    return other


def test_rebuilds_lose_no_label_and_misplace_none(encoder, other_encoder, tmp_path):
    """Labels survive `index A --rebuild` on an index holding A and B, the rebuild of an index Store.open
    refuses, the index deleted and built again in another order (ids restart), and moved photos; no label
    ever lands on another photo."""
    out = labels_over_rebuilds(tmp_path, encoder[1], other_encoder)
    assert out["lost"] == 0 and out["misplaced"] == 0, out["steps"]


# ====================================================================================== subprocess entry
if __name__ == "__main__":
    if sys.argv[1] == "kills":
        result = kill_rounds(sys.argv[2].split(","), int(sys.argv[3]), Path(sys.argv[4]))
        print(json.dumps(result))
    elif sys.argv[1] == "writer":
        _writer(sys.argv[2], float(sys.argv[3]))


# ====================================================================================== a removed photo's pictures
def removed_photo_pictures(root: Path, model: Path) -> dict:
    """Index a folder and serve it; open a photo (its preview is made) and let the map make its sheets;
    delete the photo and run `index` beside the running page. Returns the HTTP status of the photo's
    preview, thumbnail and map sheet before, after `index`, and after the page picked up the new version,
    and which of those files are still on disk."""
    import httpx
    from test_security import call
    from test_ui import on_free_port

    from app.ui import build_app, launch
    from index.build import build_index
    from index.preview import preview_file

    folder, index_dir = root / "photos", root / "index"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for k in range(8):
        shape_image(("circle", "square")[k % 2], rng, (160, 120)).save(folder / f"p{k}.jpg", quality=90)
    build_index(folder, model, index_dir, log=lambda *a: None)
    demo = build_app(index_dir)
    _, url, _ = on_free_port(launch, demo, index_dir, prevent_thread_lock=True, quiet=True)
    out: dict = {}
    try:
        page = demo.page
        page.wait_map()
        gone = int(page.store.all_ids()[0])
        call(demo, url, "open_photo", gone)
        sheets = sorted(index_dir.glob("atlas/*/sheet_000.jpg"))  # 8 photos: every one is on the map's sheet
        files = {"preview": preview_file(index_dir, gone), "thumbnail": page.store.thumbs.path(gone),
                 "sheet": sheets[0] if sheets else index_dir / "atlas" / "none"}

        def statuses() -> dict:
            return {k: httpx.get(f"{url}gradio_api/file={p}").status_code for k, p in files.items()}

        out["before"] = statuses()
        Path(page.store.rows([gone])[0]["path"]).unlink()
        build_index(folder, model, index_dir, log=lambda *a: None)
        out["after_index"] = statuses()
        time.sleep(1.1)  # the page looks for a newer version at most once a second
        call(demo, url, "search_id", int(page.store.all_ids()[-1]))
        out["after_refresh"] = statuses()
        out["on_disk"] = sorted(k for k, p in files.items() if p.exists())
    finally:
        demo.close()
    return out


def test_a_removed_photos_preview_thumbnail_and_map_sheets_leave_with_it(encoder, tmp_path):
    """After `index` drops a photo beside a running page, its preview and thumbnail are deleted and no
    longer served; once the page picks up the new version, map sheets showing it are gone too."""
    out = removed_photo_pictures(tmp_path, encoder[1])
    assert out["before"] == {"preview": 200, "thumbnail": 200, "sheet": 200}, out
    # gradio answers a file that is not there with 403 (as any path it does not serve) or 404
    assert out["after_index"]["preview"] in (403, 404) and out["after_index"]["thumbnail"] in (403, 404), out
    assert set(out["after_refresh"].values()) <= {403, 404} and out["on_disk"] == [], out
