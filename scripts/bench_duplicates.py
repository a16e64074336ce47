"""Near-duplicates on real photos: copies and bursts made from Imagenette val, found by today's grouping and
by the duplicate review (index/photohash.py + index/duplicates.py + app/review.py).

The folder (made once into .cache/dupbench/photos, deterministic from --seed):
  copies     300 photos, each with 3 edited copies drawn from: resized to 50% / 25%, JPEG quality 40-70,
             a 5-15% crop (each side cut independently), EXIF rotation (pixels turned, tag set so the
             photo shows upright), PNG, WebP, metadata stripped, brightness x0.92-1.08
  bursts     100 photos, each made into 2-3 frames: the same 88% crop window shifted by 2-5% of the side
             per frame, EXIF times 1-3 s apart (the original itself is not in the folder)
  distinct   every other val photo, as it is
Every photo but the stripped and converted copies carries an EXIF DateTimeOriginal (copies keep their
original's); every file gets the same modification time, as after a copy or an unzip.

Truth: a copy pair is two files of the same family in `copies` (the original and its edits); a burst pair
two frames of one burst. Reported per method: pairs predicted as copies (precision / recall against the copy
pairs), pairs predicted similar or burst (recall against the burst pairs, precision against burst + copy
pairs), groups and the largest, and the distinct photos a default decision would drop (marked drop while
their group holds no copy of them).

Rows:
  today       the grouping before the review (cosine >= 0.95 joined transitively, default keep-best/drop-rest),
              kept here as it was for comparison
  review-*    the review at each level (copies / copies and bursts / similar photos); `index` (the real
              pipeline, from an empty index) makes the signatures and checks every copy candidate ahead
  scale       100,000 photos, GENERATED (no image files): embeddings, grey signatures, hashes, EXIF times and
              content hashes with a near-duplicate structure (copies: resized, re-encoded, cropped; burst
              frames; clusters of alike distinct photos), put into a real Store and photo_hash.sqlite; times
              what `index` adds (check_ahead) and the review at each level, and scores it against the truth

Usage:
    python scripts/bench_duplicates.py                  # today, review: JSON lines to stdout
    python scripts/bench_duplicates.py --rows scale [--n 100000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / ".cache" / "dupbench"
VAL = ROOT / ".cache" / "imagenette" / "val"
EDITS = ("resize50", "resize25", "jpeg", "crop", "exif_rotate", "png", "webp", "strip", "brightness")
SAME_MTIME = 1_700_000_000  # every file: the date of the copy, not of the photo


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------- the folder
def _exif(taken: str | None, orientation: int | None = None) -> bytes:
    ex = Image.Exif()
    if taken:
        ex.get_ifd(0x8769)[0x9003] = taken
    if orientation:
        ex[0x0112] = orientation
    return ex.tobytes()


def _stamp(t: float) -> str:
    return time.strftime("%Y:%m:%d %H:%M:%S", time.gmtime(t))


def _edit(img: Image.Image, edit: str, rng: np.random.Generator, taken: str, out: Path) -> Path:
    """Save one edited copy of `img` to out (suffix chosen by the edit); returns the path written."""
    w, h = img.size
    if edit == "resize50":
        img.resize((w // 2, h // 2), Image.LANCZOS).save(p := out.with_suffix(".jpg"), quality=90, exif=_exif(taken))
    elif edit == "resize25":
        img.resize((w // 4, h // 4), Image.LANCZOS).save(p := out.with_suffix(".jpg"), quality=90, exif=_exif(taken))
    elif edit == "jpeg":
        img.save(p := out.with_suffix(".jpg"), quality=int(rng.integers(40, 71)), exif=_exif(taken))
    elif edit == "crop":
        cut = rng.uniform(0.05, 0.15, 2)  # of the width and of the height, split at random between the sides
        lx, ty = rng.uniform(0, 1, 2)
        x0, y0 = int(w * cut[0] * lx), int(h * cut[1] * ty)
        x1, y1 = x0 + round(w * (1 - cut[0])), y0 + round(h * (1 - cut[1]))
        img.crop((x0, y0, x1, y1)).save(p := out.with_suffix(".jpg"), quality=90, exif=_exif(taken))
    elif edit == "exif_rotate":  # stored turned, shown upright: orientation 6 means "turn 90 clockwise to show"
        img.transpose(Image.ROTATE_90).save(p := out.with_suffix(".jpg"), quality=90, exif=_exif(taken, 6))
    elif edit == "png":
        img.save(p := out.with_suffix(".png"))
    elif edit == "webp":
        img.save(p := out.with_suffix(".webp"), quality=80)
    elif edit == "strip":
        img.save(p := out.with_suffix(".jpg"), quality=92)
    elif edit == "brightness":
        arr = np.asarray(img, np.float32) * rng.uniform(0.92, 1.08)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p := out.with_suffix(".jpg"), quality=90,
                                                                     exif=_exif(taken))
    else:
        raise ValueError(edit)
    return p


def make_folder(seed: int = 0, n_copies: int = 300, n_bursts: int = 100, edits_per: int = 3) -> dict:
    """Write WORK/photos and WORK/truth.json (families of copies, bursts, the distinct photos); reuse them."""
    truth_path = WORK / "truth.json"
    if truth_path.exists():
        return json.loads(truth_path.read_text())
    files = sorted(VAL.glob("*/*.JPEG"))
    if len(files) < n_copies + n_bursts + 100:
        raise SystemExit(f"extract /work/shared/datasets/imagenette-224.tar.gz into {VAL.parent} first")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    photos = WORK / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    t0 = 1_600_000_000.0
    copies, bursts, distinct = [], [], []
    for n, j in enumerate(order):
        src = files[j]
        img = Image.open(src).convert("RGB")
        t = t0 + n * 3600 + float(rng.integers(0, 1800))  # an hour apart: no two distinct photos look like a burst
        taken = _stamp(t)
        folder = photos / src.parent.name
        folder.mkdir(exist_ok=True)
        if n < n_copies:
            orig = folder / f"{src.stem}.jpg"
            img.save(orig, quality=95, exif=_exif(taken))
            family = [str(orig)]
            for e in rng.choice(len(EDITS), edits_per, replace=False):
                family.append(str(_edit(img, EDITS[e], rng, taken, folder / f"{src.stem}_{EDITS[e]}")))
            copies.append(family)
        elif n < n_copies + n_bursts:
            w, h = img.size
            cw, ch = round(w * 0.88), round(h * 0.88)
            x, y = (w - cw) // 2, (h - ch) // 2
            frames = []
            for f in range(int(rng.integers(2, 4))):
                p = folder / f"{src.stem}_burst{f}.jpg"
                img.crop((x, y, x + cw, y + ch)).save(p, quality=90, exif=_exif(_stamp(t + f * rng.uniform(1, 3))))
                frames.append(str(p))
                step = rng.uniform(0.02, 0.05) * w * rng.choice([-1, 1], 2)  # the camera moved a little
                x = int(np.clip(x + step[0], 0, w - cw))
                y = int(np.clip(y + step[1], 0, h - ch))
            bursts.append(frames)
        else:
            p = folder / f"{src.stem}.jpg"
            img.save(p, quality=95, exif=_exif(taken))
            distinct.append(str(p))
    for p in photos.rglob("*"):
        if p.is_file():
            os.utime(p, (SAME_MTIME, SAME_MTIME))
    truth = {"copies": copies, "bursts": bursts, "distinct": distinct}
    truth_path.write_text(json.dumps(truth))
    return truth


def truth_pairs(families: list[list[str]]) -> set[frozenset[str]]:
    return {frozenset(p) for fam in families for p in itertools.combinations(fam, 2)}


# ---------------------------------------------------------------- the index, made by the real pipeline
def base_encoder() -> Path:
    """The shipped base encoder exported to ONNX (once), as `byol-search export` writes it."""
    from byol.export import export_onnx

    out = WORK / "base.onnx"
    if not out.exists():
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_quality import untrained_checkpoint

        ckpt = untrained_checkpoint(WORK / "base.pt", "base")
        export_onnx(ckpt, out, log=lambda *a: None)
    return out


def build(truth: dict) -> tuple[Path, float, dict]:
    """Index WORK/photos with the base encoder (index/build.py, as `byol-search index` runs it) from an empty
    index; (index_dir, seconds, summary)."""
    import shutil

    from index.build import build_index

    index_dir = WORK / "index"
    shutil.rmtree(index_dir, ignore_errors=True)
    t0 = time.perf_counter()
    summary = build_index(WORK / "photos", base_encoder(), index_dir, log=lambda *a: None)
    return index_dir, time.perf_counter() - t0, summary


# ---------------------------------------------------------------- scoring
def score(groups: list[tuple[str, list[str], list[str]]], truth: dict) -> dict:
    """groups: (kind, paths, decision per path). Pair precision / recall of copies and of similar shots, the
    distinct photos dropped by default, group sizes."""
    copy_truth, burst_truth = truth_pairs(truth["copies"]), truth_pairs(truth["bursts"])
    family = {p: n for n, fam in enumerate(truth["copies"]) for p in fam}
    pred_copy, pred_similar = set(), set()
    dropped_distinct = 0
    for kind, paths, decisions in groups:
        pairs = {frozenset(p) for p in itertools.combinations(paths, 2)}
        (pred_copy if kind in ("identical files", "copy") or kind.startswith("the same photo") else pred_similar
         ).update(pairs)
        for p, d in zip(paths, decisions):
            if d == "drop" and not any(q != p and family.get(q, -1) == family.get(p, -2) for q in paths):
                dropped_distinct += 1

    def pr(pred: set, true: set) -> dict:
        hit = len(pred & true)
        return {"precision": round(hit / len(pred), 4) if pred else None, "recall": round(hit / len(true), 4),
                "predicted_pairs": len(pred), "true_pairs": len(true)}

    sizes = [len(p) for _, p, _ in groups]
    return {"copies": pr(pred_copy, copy_truth), "similar": pr(pred_similar, burst_truth),
            "similar_or_copy_precision": round(len(pred_similar & (burst_truth | copy_truth)) / len(pred_similar), 4)
            if pred_similar else None,
            "groups": len(groups), "largest_group": max(sizes, default=0),
            "photos_in_groups": sum(sizes), "distinct_photos_dropped_by_default": dropped_distinct}


def single_linkage(store, threshold: float, k: int = 16) -> list[list[int]]:
    """The grouping before the review, as it was: each photo's k nearest at cosine >= threshold, joined
    transitively (union-find)."""
    from index.duplicates import neighbour_pairs

    ids = np.asarray(store.all_ids(), np.int64)
    parent = {int(i): int(i) for i in ids}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    k1 = min(k + 1, store.count)
    for a, b in neighbour_pairs(ids, lambda c: store.search(store.get_vectors(c), k1), threshold):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in parent:
        groups.setdefault(find(i), []).append(i)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def row_today(index_dir: Path, truth: dict) -> dict:
    """The grouping before this change: cosine >= 0.95 joined transitively, every photo but the best dropped."""
    from app.review import default_keep
    from index.photoinfo import PhotoInfoCache
    from index.store import Store

    with Store.open(index_dir) as store, PhotoInfoCache(store) as infos:
        t0 = time.perf_counter()
        raw = single_linkage(store, 0.95)
        seconds = time.perf_counter() - t0
        facts = infos.get([i for g in raw for i in g])
        paths = {int(r["id"]): str(r["path"]) for r in store.rows([i for g in raw for i in g])}
        groups = []
        for g in raw:
            best = default_keep([(i, facts[i]) for i in g])
            groups.append(("copy", [paths[i] for i in g], ["keep" if i == best else "drop" for i in g]))
    return {"row": "today (cosine 0.95, single linkage)", "seconds": round(seconds, 2), **score(groups, truth)}


def row_review(index_dir: Path, truth: dict, level: str) -> dict:
    from app.review import Decisions, review_groups
    from index.photoinfo import PhotoInfoCache
    from index.store import Store

    with Store.open(index_dir) as store, PhotoInfoCache(store) as infos:
        dec = Decisions(index_dir)
        t0 = time.perf_counter()
        groups = review_groups(store, infos, dec, level, max_groups=10**9)
        seconds = time.perf_counter() - t0
        dec.close()
    scored = [(g.kind, [m.info.path for m in g.members], [m.decision for m in g.members]) for g in groups]
    kinds: dict[str, int] = {}
    for g in groups:
        kinds[g.kind] = kinds.get(g.kind, 0) + 1
    return {"row": f"review: {level}", "seconds": round(seconds, 2), "kinds": kinds, **score(scored, truth)}


# ---------------------------------------------------------------- the scale row: generated photos
SOURCE = (96, 128)  # (h, w) of a generated photo's pixels (its grey signature is made from them as from a photo)


def _field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like grey field: coarse shapes and finer detail (random grids upsampled), 0-255."""
    coarse = np.asarray(Image.fromarray(rng.uniform(0, 255, (6, 8)).astype(np.uint8)).resize((w, h), Image.BICUBIC),
                        np.float32)
    fine = np.asarray(Image.fromarray(rng.uniform(0, 255, (24, 32)).astype(np.uint8)).resize((w, h), Image.BILINEAR),
                      np.float32)
    return 0.7 * coarse + 0.3 * fine


def _grey(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    import io

    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("L")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def generate(n: int, seed: int) -> tuple[list[dict], np.ndarray, list, dict]:
    """n generated photos: (rows for the Store, vectors, signatures, truth). Structure:
    - distinct photos in clusters of about 25 alike ones (embeddings at cosine 0.72-0.95 to each other, grey
      images sharing 60% of their field), 30% without an EXIF time (downloads, screenshots);
    - n/50 photos with two copies each, drawn from: resized to 50%, JPEG quality 40-70, a 5-15% crop (each
      side cut at random), re-encoded with its EXIF time stripped; embeddings at cosine 0.95-0.99;
    - n/80 bursts of three frames: an 88% window moved 2-5% per frame, 1-3 s apart, the same pixel size.
    """
    from index.photohash import Signature, check_image, phash

    rng = np.random.default_rng(seed)
    d, n_fam, n_burst = 256, n // 50, n // 80
    n_distinct = n - 3 * n_fam - 3 * n_burst
    n_clusters = max(1, n_distinct // 25)
    centres = _unit(rng.standard_normal((n_clusters, d)))
    cfields = [_field(rng, *SOURCE) for _ in range(n_clusters)]
    rows, vecs, sigs = [], [], []
    copies, bursts = [], []
    clock = 1_600_000_000.0

    def add(pixels: Image.Image, v: np.ndarray, taken: float | None, size: tuple[int, int]) -> str:
        i = len(rows)
        path = f"/generated/{i // 1000}/{i}.jpg"
        rows.append({"path": path, "sha256": f"{seed:04d}{i:060d}", "size": 1000 + i, "mtime_ns": SAME_MTIME,
                     "width": size[0], "height": size[1]})
        vecs.append(v)
        sigs.append(Signature(phash(pixels), np.clip(np.rint(check_image(pixels)), 0, 255).astype(np.uint8), taken))
        return path

    for j in range(n_distinct + n_fam):
        c = int(rng.integers(n_clusters))
        a2 = rng.uniform(0.05, 0.4)
        v = _unit(centres[c] + np.sqrt(a2) * _unit(rng.standard_normal(d)))
        img = _grey(0.6 * cfields[c] + 0.4 * _field(rng, *SOURCE))
        clock += 3600 + rng.uniform(0, 1800)
        taken = clock if rng.random() > 0.3 else None
        orig = add(img, v, taken, (4000, 3000))
        if j < n_fam:  # a photo with two edited copies
            fam = [orig]
            for e in rng.choice(4, 2, replace=False):
                cv = _unit(v + np.sqrt(rng.uniform(0.01, 0.05)) * _unit(rng.standard_normal(d)))
                if e == 0:
                    fam.append(add(img.resize((64, 48), Image.LANCZOS), cv, taken, (2000, 1500)))
                elif e == 1:
                    fam.append(add(_jpeg(img, int(rng.integers(40, 71))), cv, taken, (4000, 3000)))
                elif e == 2:
                    h, w = SOURCE
                    cut = rng.uniform(0.05, 0.15, 2)
                    x0, y0 = int(w * cut[0] * rng.random()), int(h * cut[1] * rng.random())
                    x1, y1 = x0 + round(w * (1 - cut[0])), y0 + round(h * (1 - cut[1]))
                    fam.append(add(img.crop((x0, y0, x1, y1)), cv, taken,
                                   (round(4000 * (1 - cut[0])), round(3000 * (1 - cut[1])))))
                else:
                    fam.append(add(_jpeg(img, 92), cv, None, (4000, 3000)))
            copies.append(fam)
    for _ in range(n_burst):
        big = _field(rng, SOURCE[0] + 16, SOURCE[1] + 20)
        v = _unit(rng.standard_normal(d))
        clock += 3600 + rng.uniform(0, 1800)
        t, x, y = clock, 10, 8
        frames = []
        for _f in range(3):
            win = big[y:y + SOURCE[0], x:x + SOURCE[1]]
            frames.append(add(_grey(win), _unit(v + 0.2 * _unit(rng.standard_normal(d))), t, (4000, 3000)))
            t += rng.uniform(1, 3)
            x = int(np.clip(x + rng.choice([-1, 1]) * rng.uniform(0.02, 0.05) * SOURCE[1], 0, 20))
            y = int(np.clip(y + rng.choice([-1, 1]) * rng.uniform(0.02, 0.05) * SOURCE[0], 0, 16))
        bursts.append(frames)
    return rows, np.stack(vecs), sigs, {"copies": copies, "bursts": bursts}


def run_scale(work: Path, n: int, seed: int) -> list[dict]:
    """The scale row: generated photos in a real Store (IVF above 50,000) and photo_hash.sqlite."""
    import shutil

    from app.review import Decisions, review_groups
    from index.photohash import PhotoHashes, check_ahead
    from index.photoinfo import PhotoInfoCache
    from index.store import Store

    t0 = time.perf_counter()
    rows, vecs, sigs, truth = generate(n, seed)
    t_gen = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    index_dir = work / "index"
    t0 = time.perf_counter()
    with Store.create(index_dir, vecs.shape[1], "0" * 64, "generated.onnx", {}) as store:
        ids = store.add(rows, vecs)
        store.save()
    with Store.open(index_dir) as store, PhotoHashes(index_dir) as ph:
        ph.put((int(i), r, s, None) for i, r, s in zip(ids, rows, sigs))
        t_store = time.perf_counter() - t0
        t0 = time.perf_counter()
        checked = check_ahead(store, ph)
        t_ahead = time.perf_counter() - t0
        out = [{"row": f"scale: {n:,} generated photos, what index adds", "index_type": store.index_type,
                "generate_seconds": round(t_gen, 1), "store_seconds": round(t_store, 1),
                "pairs_checked": checked, "seconds": round(t_ahead, 1)}]
    from index.duplicates import LEVELS

    with Store.open(index_dir) as store, PhotoInfoCache(store) as infos:
        dec = Decisions(index_dir)
        for level in LEVELS:
            t0 = time.perf_counter()
            shown = review_groups(store, infos, dec, level)  # what the page asks for: the first 60 groups
            secs = time.perf_counter() - t0
            every = review_groups(store, infos, dec, level, max_groups=10**9)
            scored = [(g.kind, [m.info.path for m in g.members], [m.decision for m in g.members]) for g in every]
            out.append({"row": f"scale: review: {level}", "seconds": round(secs, 1), "groups_shown": len(shown),
                        **score(scored, truth)})
        dec.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="today,review")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=100_000, help="photos of the scale row")
    args = ap.parse_args()
    rows = args.rows.split(",")
    head = {"cpu": cpu_name(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    if "scale" in rows:
        for r in run_scale(WORK / "scale", args.n, args.seed):
            print(json.dumps({**head, **r}), flush=True)
    if {"today", "review"} & set(rows):
        truth = make_folder(args.seed)
        index_dir, secs, summary = build(truth)
        print(json.dumps({**head, "row": "index", "photos": sum(1 for p in (WORK / "photos").rglob("*") if p.is_file()),
                          "seconds": round(secs, 1), "pairs_checked": summary.get("pairs_checked")}), flush=True)
        if "today" in rows:
            print(json.dumps({**head, **row_today(index_dir, truth)}), flush=True)
        if "review" in rows:
            from index.duplicates import LEVELS

            for level in LEVELS:
                print(json.dumps({**head, **row_review(index_dir, truth, level)}), flush=True)


if __name__ == "__main__":
    main()
