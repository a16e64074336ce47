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
  today       the grouping before this change (store.duplicates at cosine 0.95, default keep-best/drop-rest)
  review-*    the review at each level (copies / copies and bursts / similar photos)

Usage:
    python scripts/bench_duplicates.py                  # every row, JSON lines to stdout
    python scripts/bench_duplicates.py --rows today,review
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


def build(truth: dict) -> tuple[Path, float]:
    """Index WORK/photos with the base encoder (index/build.py, as `byol-search index` runs it); seconds."""
    from index.build import build_index

    index_dir = WORK / "index"
    t0 = time.perf_counter()
    build_index(WORK / "photos", base_encoder(), index_dir, log=lambda *a: None)
    return index_dir, time.perf_counter() - t0


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


def row_today(index_dir: Path, truth: dict) -> dict:
    """The grouping before this change: cosine >= 0.95 joined transitively, every photo but the best dropped."""
    from app.review import default_keep
    from index.photoinfo import PhotoInfoCache
    from index.store import Store

    with Store.open(index_dir) as store, PhotoInfoCache(store) as infos:
        t0 = time.perf_counter()
        raw = store.duplicates(0.95)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="today,review")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = args.rows.split(",")
    head = {"cpu": cpu_name(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    if {"today", "review"} & set(rows):
        truth = make_folder(args.seed)
        index_dir, secs = build(truth)
        print(json.dumps({**head, "row": "index", "photos": sum(1 for p in (WORK / "photos").rglob("*") if p.is_file()),
                          "seconds": round(secs, 1)}), flush=True)
        if "today" in rows:
            print(json.dumps({**head, **row_today(index_dir, truth)}), flush=True)
        if "review" in rows:
            from index.duplicates import LEVELS

            for level in LEVELS:
                print(json.dumps({**head, **row_review(index_dir, truth, level)}), flush=True)


if __name__ == "__main__":
    main()
