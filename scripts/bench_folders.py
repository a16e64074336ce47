"""The few-shot classifier and the page's accuracy estimate on folders shaped like real ones.

The held-out Imagenette classes (5 kinds of about 1,350 photos each, an encoder at 78% kNN on them) are an easy
folder for a classifier that averages over neighbourhoods: almost every photo's nearest photos are of its kind.
A user's folder has more kinds, 30 to 800 photos of each, kinds nobody labels, bursts of near-identical shots,
and an encoder that reaches 40-50% kNN on it. This builds such folders from ../shared/datasets only (CIFAR-10
and Imagenette; kinds the base encoder saw are marked in the table), gives each the two encoders a user would
have (the shipped base alone, and the base + 15 minutes of `pretrain` on that folder: the 613 steps the
default 15-minute run made alone on the 2-core AVX2 machine, BENCHMARKS.md), and runs the page's path on it:
`shots` labelled photos of every labelled kind drawn at random, the classifier fitted, the estimate the page
would report (what `app.probe.Probe.train` computes) and the truth, top-1 on every other photo of the labelled kinds.

Shapes (folder: what `pretrain` adapts on; labelled: the kinds the user labels):
  heldout      the 5 held-out Imagenette classes, train split (4,759 photos)       the headline, never seen
  cifar        10 CIFAR-10 kinds of 60-100 photos (small 32 px images)              base saw CIFAR-10 train
  mixed20      20 kinds of 60-100 photos: the 10 CIFAR-10 kinds and 10 Imagenette   base saw CIFAR, 5 nette
  uneven       10 Imagenette kinds of 30 to 800 photos (geometric sizes)           5 seen, 5 held out
  unlabelled   the uneven folder with 5 kinds labelled, half its photos of kinds nobody labels
  bursts       5 held-out Imagenette kinds of 120 photos, a third of them shot again 1-5 times (crop,
               exposure, JPEG quality: a phone's burst or an edited copy), 1,000-odd photos
  closeup      10 Imagenette kinds of 60 to 300 photos as grey close-ups (the middle 45% of the frame,
               no colour): a domain the base never trained on, as a lab's or a catalogue's photos are

    python scripts/bench_folders.py build                       # folders under .cache/folders/, made once
    nice -n 5 python scripts/bench_folders.py adapt uneven      # base + 613 steps on one folder (15 min alone)
    python scripts/bench_folders.py run --draws 40              # every shape, encoder, label count; JSON + table

Adapting is one `byol-search pretrain` per folder (the unlabelled shape shares the uneven folder's run); a shape
whose folder has no adapted run yet is measured on the base alone (its rows say "base"). The candidates are the
classifiers measured before choosing what the page ships (BENCHMARKS.md, "The few-shot classifier on folders
shaped like real ones"); "page (logistic, calibrated) + estimates" is what it ships, byol.probe.fit_page and
byol.probe.estimate, and its table gives each estimate minus the truth.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_pretrain import CACHE, DATASETS, extract_once  # noqa: E402
from train_base import HELD_OUT_IMAGENETTE, SEEN_IMAGENETTE  # noqa: E402

WORK = CACHE / "folders"
ADAPT_STEPS = 613  # the default 15-minute run's steps alone on the 2-core AVX2 machine (BENCHMARKS.md)
NETTE_NAMES = {"n01440764": "tench", "n02102040": "springer", "n02979186": "cassette player",
               "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
               "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
               "n03888257": "parachute"}


@dataclass(frozen=True)
class Shape:
    """One collection: a folder (what pretrain adapts on) and the kinds a user labels in it."""

    name: str
    folder: str  # the folder's name under WORK (shapes may share one)
    labelled: tuple[str, ...] | None  # kinds labelled; None: every kind of the folder
    seen: str  # what of it the base encoder saw


SHAPES = (
    Shape("heldout", "heldout", None, "no (held-out classes)"),
    Shape("cifar", "cifar", None, "yes (CIFAR-10 train)"),
    Shape("mixed20", "mixed20", None, "CIFAR-10 and 5 of 10 Imagenette kinds"),
    Shape("uneven", "uneven", None, "5 of 10 kinds"),
    Shape("unlabelled", "uneven", ("k0 ", "k1 ", "k4 ", "k6 ", "k9 "), "5 of 10 kinds"),  # name prefixes
    Shape("bursts", "bursts", None, "no (held-out classes)"),
    Shape("closeup", "closeup", None, "no (grey close-ups; 5 of the kinds in colour, whole)"),
)
FOLDERS = ("uneven", "cifar", "bursts", "heldout", "mixed20", "closeup")  # the order adaptation runs in


# ----------------------------------------------------------------------------------------------------------
# the folders, made once from the shared datasets
# ----------------------------------------------------------------------------------------------------------
def _sources() -> tuple[Path, Path]:
    return (extract_once(DATASETS / "imagenette-224.tar.gz", CACHE / "imagenette"),
            extract_once(DATASETS / "cifar10-jpg.tar.gz", CACHE / "cifar10"))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _nette(nette: Path, wnid: str) -> list[Path]:
    """Every photo of an Imagenette class, train then val (a user's folder has no splits)."""
    return _files(nette / "train" / wnid) + _files(nette / "val" / wnid)


def _link(dest: Path, kinds: dict[str, list[Path]]) -> None:
    for kind, files in kinds.items():
        (dest / kind).mkdir(parents=True, exist_ok=True)
        for f in files:
            (dest / kind / f.name).symlink_to(f.resolve())


def _burst_copy(src: Path, dest: Path, rng: np.random.Generator) -> None:
    """A near-duplicate of a photo: a slightly tighter, shifted frame, another exposure, another JPEG quality."""
    from PIL import Image, ImageEnhance

    with Image.open(src) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = rng.uniform(0.82, 0.97)
        cw, ch = int(w * s), int(h * s)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x, y, x + cw, y + ch)).resize((w, h))
        im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.85, 1.15))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(rng.integers(60, 92)))
    dest.write_bytes(buf.getvalue())


def _closeup(src: Path, dest: Path) -> None:
    """A grey close-up of a photo: the middle 45% of its frame, no colour, saved at the original size."""
    from PIL import Image

    with Image.open(src) as im:
        w, h = im.size
        cw, ch = int(w * 0.45), int(h * 0.45)
        x, y = (w - cw) // 2, (h - ch) // 2
        im = im.convert("L").crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
    dest.write_bytes(buf.getvalue())


def build(name: str) -> Path:
    """WORK/name/photos/<kind>/ (links to the datasets' files, or new files for bursts); made once."""
    dest = WORK / name / "photos"
    if dest.is_dir():
        return dest
    nette, cifar = _sources()
    rng = np.random.default_rng(sum(name.encode()))
    tmp = dest.with_name(".photos-tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    kinds: dict[str, list[Path]] = {}
    if name == "heldout":
        kinds = {NETTE_NAMES[w]: _files(nette / "train" / w) for w in HELD_OUT_IMAGENETTE}
    elif name in ("cifar", "mixed20"):
        for c in sorted(p.name for p in (cifar / "train").iterdir()):
            kinds[f"cifar {c}"] = list(rng.permutation(_files(cifar / "train" / c))[: rng.integers(60, 101)])
        if name == "mixed20":
            for w in SEEN_IMAGENETTE + HELD_OUT_IMAGENETTE:
                kinds[NETTE_NAMES[w]] = list(rng.permutation(_nette(nette, w))[: rng.integers(60, 101)])
    elif name == "uneven":
        # k0..k9 of 30 to 800 photos, geometric; which class gets which size is drawn (seen and held out mixed)
        sizes = np.round(30 * (800 / 30) ** (np.arange(10) / 9)).astype(int)
        order = rng.permutation(SEEN_IMAGENETTE + HELD_OUT_IMAGENETTE)
        kinds = {f"k{i} {NETTE_NAMES[w]}": list(rng.permutation(_nette(nette, w))[:s])
                 for i, (w, s) in enumerate(zip(order, sizes))}
    elif name == "bursts":
        kinds = {NETTE_NAMES[w]: list(rng.permutation(_files(nette / "train" / w))[:120]) for w in HELD_OUT_IMAGENETTE}
    elif name == "closeup":
        kinds = {NETTE_NAMES[w]: list(rng.permutation(_nette(nette, w))[: rng.integers(60, 301)])
                 for w in SEEN_IMAGENETTE + HELD_OUT_IMAGENETTE}
    else:
        raise SystemExit(f"no folder {name!r}; choose from {', '.join(FOLDERS)}")
    if name == "closeup":  # new files, not links
        for kind, files in kinds.items():
            (tmp / kind).mkdir(parents=True, exist_ok=True)
            for f in files:
                _closeup(f, tmp / kind / f.name)
        os.rename(tmp, dest)
        return dest
    _link(tmp, kinds)
    if name == "bursts":  # a third of the photos get 1-5 near-duplicates beside them
        for kind, files in kinds.items():
            for f in files:
                if rng.random() < 1 / 3:
                    for j in range(int(rng.integers(1, 6))):
                        _burst_copy(f, tmp / kind / f"{f.stem}-burst{j}.jpg", rng)
    os.rename(tmp, dest)
    return dest


def collection(name: str) -> tuple[list[str], list[str]]:
    """(paths, kind of each) of a folder, sorted."""
    photos = build(name)
    paths, kinds = [], []
    for kind in sorted(p.name for p in photos.iterdir() if p.is_dir()):
        for f in sorted((photos / kind).iterdir()):
            paths.append(str(f))
            kinds.append(kind)
    return paths, kinds


# ----------------------------------------------------------------------------------------------------------
# the encoders: the base alone, and the base + 15 minutes on the folder
# ----------------------------------------------------------------------------------------------------------
def adapted(name: str, tag: str = "") -> Path:
    """The folder's base + 15 minutes run; `tag` names a run with other settings (the defaults study)."""
    return WORK / name / f"adapt{tag}" / "checkpoint.pt"


def _finished(run: Path) -> bool:
    log = run / "log.jsonl"
    return log.is_file() and any(json.loads(line)["kind"] == "end" for line in log.read_text().splitlines())


def adapt(name: str, steps: int = ADAPT_STEPS, extra: list[str] | None = None, tag: str = "") -> Path:
    """`byol-search pretrain FOLDER --init base --steps 613` as a user runs it (default settings, or `extra`)."""
    photos, run = build(name), adapted(name, tag).parent
    if _finished(run):
        return adapted(name, tag)
    exe = ROOT / ".venv" / "bin" / "byol-search"
    cmd = [str(exe), "pretrain", str(photos), "--out", str(run), "--steps", str(steps), "--init", "base",
           "--cache-dir", str(WORK / name / "cache-32"), "--no-progress", *(extra or [])]
    if (run / "checkpoint.pt").is_file():
        cmd = [str(exe), "pretrain", "--out", str(run), "--resume", "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    (run / "command.txt").write_text(" ".join(cmd) + f"\n{time.perf_counter() - t0:.0f} s\n")
    return adapted(name, tag)


def base_checkpoint() -> Path:
    from bench_quality import untrained_checkpoint

    path = WORK / "base-alone.pt"
    if not path.is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        untrained_checkpoint(path, "base")
    return path


def embeddings(name: str, checkpoint: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(vectors (n,d) float32 unit rows, kind index (n), kind names) of a folder by one encoder; cached."""
    from byol.checkpoint import file_sha256, load_encoder
    from byol.evaluate import embed_folder

    paths, kinds = collection(name)
    names = sorted(set(kinds))
    y = np.array([names.index(k) for k in kinds])
    key = hashlib.sha256(json.dumps([file_sha256(checkpoint), paths]).encode()).hexdigest()[:16]
    file = WORK / name / f"emb-{key}.npz"
    if file.is_file():
        z = np.load(file)
        return z["x"], z["y"], names
    encoder, preprocess, _ = load_encoder(checkpoint)
    e = embed_folder(encoder, preprocess, paths, precision="fp32", progress=False)
    x = e.features / np.linalg.norm(e.features, axis=1, keepdims=True).clip(min=1e-12)
    np.savez(file, x=x.astype(np.float32), y=y[e.kept])
    return x.astype(np.float32), y[e.kept], names


# ----------------------------------------------------------------------------------------------------------
# the classifiers compared, each on the same draws: name -> fit(ctx, rows, y, c) -> (probabilities of every
# photo of the collection (n, c), the accuracy the page would report or None)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Context:
    """One collection as one encoder sees it: unit vectors and the exact neighbour graph (what the page holds)."""

    x: np.ndarray
    graph: object  # byol.neighbours.Graph
    _nc: dict[tuple[int, int], object]

    def nc(self, k: int | None = None, kp: int | None = None):  # noqa: ANN201
        from byol import neighbours

        key = (k or 0, kp or 0)
        if key not in self._nc:
            self._nc[key] = neighbours.NeighbourClassifier(self.graph, k, kp)
        return self._nc[key]


def _logistic(ctx: Context, rows, y, c):  # noqa: ANN001, ANN202
    from byol import probe

    clf = probe.fit_linear(ctx.x[rows], y, c, weight_decay=1e-4)
    return clf.predict_proba(ctx.x), None


def _fewshot(ctx: Context, rows, y, c):  # noqa: ANN001, ANN202
    from byol import probe

    return probe.fit_fewshot(ctx.x[rows], y, c).predict_proba(ctx.x), None


def _shipped(k: int | None = None):  # noqa: ANN202
    def fit(ctx: Context, rows, y, c):  # noqa: ANN001, ANN202
        from byol import neighbours

        nc = ctx.nc(k, None if k is None else max(1, round(0.3 * k)))
        chosen = neighbours.choose(nc, rows, y, c)
        return chosen.predict_proba(nc), chosen.accuracy
    return fit


def _averaged(k: int | None):  # noqa: ANN202
    def fit(ctx: Context, rows, y, c):  # noqa: ANN001, ANN202
        nc = ctx.nc(k, None if k is None else max(1, round(0.3 * k)))
        return nc.predict_proba(nc.fit(rows, y, c)), None
    return fit


def _mixture(k: int, weight: float = 0.5):  # noqa: ANN202
    """weight x the averaged classifier's probabilities + the rest the plain few-shot one's (shrunk toward it)."""
    def fit(ctx: Context, rows, y, c):  # noqa: ANN001, ANN202
        from byol import probe

        nc = ctx.nc(k, max(1, round(0.3 * k)))
        plain = probe.fit_fewshot(ctx.x[rows], y, c)
        return weight * nc.predict_proba(nc.fit(rows, y, c)) + (1 - weight) * plain.predict_proba(ctx.x), None
    return fit


def _propagated(k: int = 10, alpha: float = 0.8, mutual: bool = True, iters: int = 20, prior: float = 0.0):
    """Label propagation (Zhou et al. 2004) on the k-nearest-neighbour graph, cosine^3 weights, edges kept only
    when both photos list each other (`mutual`: reciprocal neighbours, Iscen et al. 2019) or either does;
    the labelled photos are the sources. `prior` > 0 adds the plain few-shot classifier's probabilities as a
    weaker source on every photo (a photo the graph does not reach keeps the classifier's guess)."""
    def fit(ctx: Context, rows, y, c):  # noqa: ANN001, ANN202
        import torch

        from byol import probe

        g = ctx.graph
        n = len(g)
        r = torch.as_tensor(g.rows[:, 1 : k + 1].astype(np.int64))  # self excluded
        w = torch.as_tensor(g.scores[:, 1 : k + 1]).clamp(min=0) ** 3 * (r >= 0)
        r = r.clamp(min=0)
        a = torch.zeros(n, n)  # the bench's collections are a few thousand photos: dense is fine
        a[torch.arange(n).repeat_interleave(r.shape[1]), r.flatten()] = w.flatten()
        s = torch.minimum(a, a.T) if mutual else torch.maximum(a, a.T)  # mutual: zero unless both list each other
        d = s.sum(1).clamp(min=1e-12) ** -0.5
        s = d[:, None] * s * d[None, :]
        y0 = torch.zeros(n, c)
        y0[torch.as_tensor(rows), torch.as_tensor(y)] = 1.0
        if prior:
            y0 = y0 + prior * torch.as_tensor(probe.fit_fewshot(ctx.x[rows], y, c).predict_proba(ctx.x))
        f = y0.clone()
        for _ in range(iters):
            f = alpha * (s @ f) + (1 - alpha) * y0
        f = f + 1e-9 * torch.as_tensor(probe.fit_fewshot(ctx.x[rows], y, c).predict_proba(ctx.x))  # ties
        return (f / f.sum(1, keepdim=True).clamp(min=1e-12)).numpy(), None
    return fit


def _page(ctx: Context, rows, y, c):  # noqa: ANN001, ANN202
    """The page's classifier (byol.probe.fit_page: logistic regression, calibrated) and the estimates a page
    could report: the stratified cross-validation's accuracy, its classes weighted equally or by the share of
    the unlabelled photos predicted as each, and the mean calibrated confidence on those photos."""
    from byol import probe

    fitted = probe.fit_page(ctx.x[rows], y, c)
    p = fitted.probe.predict_proba(ctx.x)
    rest = np.setdiff1d(np.arange(len(ctx.x)), rows)
    share = np.bincount(p[rest].argmax(1), minlength=c) / len(rest)
    est: dict = {"confidence": float(p[rest].max(1).mean()), "T": fitted.temperature, "probabilities": p}
    if fitted.cv is not None:
        est["cv"] = fitted.cv.accuracy()
        est["cv, classes by predicted share"] = fitted.cv.accuracy(share)
    reported = probe.estimate(fitted.cv, est["confidence"])
    if reported is not None:
        est["reported"], est["low"], est["high"] = reported
    return p, est


def _propagated_or_plain(k: int = 20, prior: float = 0.2, margin: float = 0.0):
    """Propagation with the classifier's prior where 5-fold cross-validation on the labels finds it at least
    `margin` more accurate than plain logistic regression on the same folds, else plain logistic regression."""
    lp = _propagated(k, mutual=False, prior=prior)

    def fit(ctx: Context, rows, y, c):  # noqa: ANN001, ANN202
        from byol import probe

        split = probe.cv_folds(y, 5)
        if split is not None:
            a = b = 0
            for train, test in split:
                a += int((lp(ctx, rows[train], y[train], c)[0][rows[test]].argmax(1) == y[test]).sum())
                b += int((_logistic(ctx, rows[train], y[train], c)[0][rows[test]].argmax(1) == y[test]).sum())
            if a < b + margin * len(y):
                return _logistic(ctx, rows, y, c)
        return lp(ctx, rows, y, c)
    return fit


def candidates() -> dict:
    return {
        "logistic": _logistic,
        "fewshot": _fewshot,
        "page (logistic, calibrated) + estimates": _page,
        "shipped (neighbours or plain, k=n/40)": _shipped(),
        "averaged k=n/40": _averaged(None),
        "averaged k=5": _averaged(5),
        "averaged k=10": _averaged(10),
        "averaged k=20": _averaged(20),
        "neighbours or plain k=10": _shipped(10),
        "mixture k=10": _mixture(10),
        "mixture k=20": _mixture(20),
        "propagation k=10 mutual": _propagated(10),
        "propagation k=10 mutual + prior": _propagated(10, prior=0.2),
        "propagation k=20 + prior": _propagated(20, mutual=False, prior=0.2),
        "propagation k=20 + prior 1": _propagated(20, mutual=False, prior=1.0),
        "propagation k=20 alpha 0.5 + prior": _propagated(20, alpha=0.5, mutual=False, prior=0.2),
        "propagation k=10 + prior": _propagated(10, mutual=False, prior=0.2),
        "propagation or logistic": _propagated_or_plain(),
        "propagation or logistic, margin 2%": _propagated_or_plain(margin=0.02),
    }


def shape_rows(shape: Shape, kinds: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the labelled kinds' photos, their class index among the labelled kinds)."""
    keep = [i for i, nm in enumerate(names) if shape.labelled is None or nm.startswith(shape.labelled)]
    rows = np.flatnonzero(np.isin(kinds, keep))
    remap = {old: new for new, old in enumerate(keep)}
    return rows, np.array([remap[int(k)] for k in kinds[rows]])


def calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top probability (Guo et al. 2017), equal-width bins."""
    conf, correct = p.max(1), (p.argmax(1) == y)
    edges = np.minimum((conf * bins).astype(int), bins - 1)
    return float(sum(abs(correct[edges == i].mean() - conf[edges == i].mean()) * (edges == i).mean()
                     for i in range(bins) if (edges == i).any()))


def run_shape(shape: Shape, x: np.ndarray, kinds: np.ndarray, names: list[str], shots: list[int], draws: int,
              fits: dict, seed: int = 0) -> dict:
    """{candidate: {shots: {"top1": [...], "estimate": [...]}}} over the same draws for every candidate."""
    from byol import neighbours, probe

    ctx = Context(x, neighbours.exact_graph(x, neighbours.K_GRAPH), {})
    pool, pool_y = shape_rows(shape, kinds, names)
    c = int(pool_y.max()) + 1
    out: dict = {name: {} for name in fits}
    for n in shots:
        rng = np.random.default_rng(seed + 1000 * n)
        for name in fits:
            out[name][str(n)] = {"top1": [], "estimate": []}
        for d in range(draws):
            pick = probe._draw(pool_y, n, rng)
            rows, y = pool[pick], pool_y[pick]
            test = np.setdiff1d(np.arange(len(pool)), pick)
            for name, fit in fits.items():
                p, est = fit(ctx, rows, y, c)
                out[name][str(n)]["top1"].append(float((p[pool[test]].argmax(1) == pool_y[test]).mean()))
                if isinstance(est, dict) and "probabilities" in est:  # calibration on the truth's photos
                    est["ece"] = calibration_error(est.pop("probabilities")[pool[test]], pool_y[test])
                out[name][str(n)]["estimate"].append(est)
            print(f"{shape.name} {n}-shot draw {d + 1}/{draws}", file=sys.stderr, end="\r", flush=True)
    return out


def summary(results: dict, shots: list[int]) -> str:
    """Markdown: per shape and encoder, every candidate's top-1 minus logistic's (mean over draws, and the
    standard error of that paired difference), logistic's own top-1 first."""
    lines = []
    for key, res in results.items():
        base = res["logistic"]
        lines.append(f"\n{key}\n\n| method | " + " | ".join(f"{n}" for n in shots) + " |")
        lines.append("|---" * (1 + len(shots)) + "|")
        lines.append("| logistic (top-1) | " + " | ".join(
            f"{100 * np.mean(base[str(n)]['top1']):.1f} ± {100 * np.std(base[str(n)]['top1']):.1f}" for n in shots) + " |")
        for name, r in res.items():
            if name == "logistic":
                continue
            cells = []
            for n in shots:
                diff = 100 * (np.array(r[str(n)]["top1"]) - np.array(base[str(n)]["top1"]))
                cells.append(f"{diff.mean():+.1f} ± {diff.std() / np.sqrt(len(diff)):.1f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def estimate_summary(results: dict, shots: list[int]) -> str:
    """Markdown: for each candidate that reports estimates, each estimate minus the truth (the same classifier's
    top-1 on the rest of the labelled kinds), mean over draws, and the share of draws within 5 points."""
    lines = []
    for key, res in results.items():
        for name, r in res.items():
            kinds = sorted({k for n in shots for e in r[str(n)]["estimate"] if isinstance(e, dict) for k in e}
                           - {"T", "ece", "low", "high"})
            if not kinds:
                continue
            lines.append(f"\n{key}: {name}, estimate - truth (mean over draws; draws within 5 points)\n")
            lines.append("| estimate | " + " | ".join(str(n) for n in shots) + " |")
            lines.append("|---" * (1 + len(shots)) + "|")
            for k in kinds:
                cells = []
                for n in shots:
                    pairs = [(e[k], t) for e, t in zip(r[str(n)]["estimate"], r[str(n)]["top1"])
                             if isinstance(e, dict) and e.get(k) is not None]
                    if not pairs:
                        cells.append("")
                        continue
                    d = 100 * np.array([a - b for a, b in pairs])
                    cells.append(f"{d.mean():+.1f} ({np.mean(np.abs(d) <= 5):.0%})")
                lines.append(f"| {k} | " + " | ".join(cells) + " |")
            cells = []
            for n in shots:  # the reported range: how often it holds the truth
                pairs = [(e["low"], e["high"], t) for e, t in zip(r[str(n)]["estimate"], r[str(n)]["top1"])
                         if isinstance(e, dict) and "low" in e]
                cells.append(f"{np.mean([lo <= t <= hi for lo, hi, t in pairs]):.0%} "
                             f"({100 * np.mean([hi - lo for lo, hi, _ in pairs]):.0f} wide)" if pairs else "")
            if any(cells):
                lines.append("| range holds the truth | " + " | ".join(cells) + " |")
            eces = [np.mean([e["ece"] for e in r[str(n)]["estimate"] if isinstance(e, dict) and "ece" in e] or [np.nan])
                    for n in shots]
            if not all(np.isnan(eces)):
                lines.append("| calibration error (ECE) | " + " | ".join(f"{v:.2f}" for v in eces) + " |")
    return "\n".join(lines)


def report(files: list[Path], shots: list[int]) -> str:
    """The tables BENCHMARKS.md gives, from one or more `run --out` files: per shape and encoder, logistic
    top-1 (mean and spread over draws), the classifier shipped before minus logistic, the page's estimate minus
    the truth and how often its range holds the truth; then 5-shot top-1 of every encoder of each shape."""
    results: dict = {}
    for f in files:
        results.update(json.loads(f.read_text()))
    page, before = "page (logistic, calibrated) + estimates", "shipped (neighbours or plain, k=n/40)"
    lines = ["| shape / encoder | draws | logistic top-1 at " + " / ".join(map(str, shots)) + " (std) | classifier shipped "
             "before, minus logistic | estimate minus truth at 2 / 5 / 10 / 20 | range holds the truth (mean width) |",
             "|---|---|---|---|---|---|"]
    for key, res in results.items():
        top = {n: 100 * np.array(res["logistic"][str(n)]["top1"]) for n in shots if str(n) in res["logistic"]}
        cells = [" / ".join(f"{t.mean():.1f}" for t in top.values()) + " (" + " / ".join(f"{t.std():.1f}" for t in top.values()) + ")"]
        if before in res:
            cells.append(" / ".join(f"{(100 * np.array(res[before][str(n)]['top1']) - top[n]).mean():+.1f}" for n in top))
        else:
            cells.append("")
        est, cover = [], []
        for n in (2, 5, 10, 20):
            if page not in res or str(n) not in res[page]:
                continue
            r = res[page][str(n)]
            pairs = [(e, t) for e, t in zip(r["estimate"], r["top1"]) if isinstance(e, dict) and "reported" in e]
            est.append(f"{100 * np.mean([e['reported'] - t for e, t in pairs]):+.1f}")
            cover.append(f"{np.mean([e['low'] <= t <= e['high'] for e, t in pairs]):.0%} "
                         f"({100 * np.mean([e['high'] - e['low'] for e, _ in pairs]):.0f})")
        draws = len(next(iter(top.values())))
        lines.append(f"| {key} | {draws} | " + " | ".join(cells + [" / ".join(est), " / ".join(cover)]) + " |")
    by_shape: dict = {}
    for key, res in results.items():
        shape, enc = key.split(" / ", 1)
        if "5" in res["logistic"]:
            by_shape.setdefault(shape, {})[enc] = np.array(res["logistic"]["5"]["top1"]) * 100
    encs = sorted({e for v in by_shape.values() for e in v}, key=lambda e: (e != "base", e != "base + 15 min", e))
    lines += ["", "| shape | " + " | ".join(f"5-shot, {e}" for e in encs) + " |", "|---" * (1 + len(encs)) + "|"]
    for shape, v in by_shape.items():
        lines.append(f"| {shape} | " + " | ".join(f"{v[e].mean():.1f} ± {v[e].std() / np.sqrt(len(v[e])):.1f}"
                                                    if e in v else "" for e in encs) + " |")
    # the defaults study: each tagged run against the default run, paired over the same draws
    tagged = [e for e in encs if e.startswith("base + 15 min") and e != "base + 15 min"]
    at = [n for n in shots if n in (1, 5, 10)]
    if tagged:
        lines += ["", "| shape | " + " | ".join(f"{e} minus the default, at " + " / ".join(map(str, at))
                                               for e in tagged) + " |", "|---" * (1 + len(tagged)) + "|"]
        for shape in by_shape:
            cells = []
            for e in tagged:
                a, b = results.get(f"{shape} / {e}"), results.get(f"{shape} / base + 15 min")
                if a is None or b is None:
                    cells.append("")
                    continue
                d = [100 * (np.array(a["logistic"][str(n)]["top1"]) - np.array(b["logistic"][str(n)]["top1"]))
                     for n in at]
                cells.append(" / ".join(f"{x.mean():+.1f} ± {x.std() / np.sqrt(len(x)):.1f}" for x in d))
            lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    shots = [int(s) for s in args.shots.split(",")]
    fits = candidates()
    if args.methods:
        fits = {k: v for k, v in fits.items() if k in args.methods.split(";") or k == "logistic"}
    out_file = args.out
    results: dict = json.loads(out_file.read_text()) if out_file.is_file() and args.keep else {}
    for shape in SHAPES:
        if args.shapes and shape.name not in args.shapes.split(","):
            continue
        encoders = {"base": base_checkpoint()}
        for tag in [""] + [t for t in args.tags.split(",") if t]:
            if adapted(shape.folder, tag).is_file() and _finished(adapted(shape.folder, tag).parent):
                encoders[f"base + 15 min{tag}"] = adapted(shape.folder, tag)
        for enc, ckpt in encoders.items():
            if args.encoders and enc not in args.encoders.split(","):
                continue
            key = f"{shape.name} / {enc}"
            t0 = time.perf_counter()
            x, kinds, names = embeddings(shape.folder, ckpt)
            results[key] = run_shape(shape, x, kinds, names, shots, args.draws, fits)
            print(f"{key}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            out_file.parent.mkdir(parents=True, exist_ok=True)
            out_file.write_text(json.dumps(results))
    print(summary(results, shots))
    print(estimate_summary(results, shots))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="make every folder under .cache/folders/")
    a = sub.add_parser("adapt", help="base + 613 steps of pretrain on one folder (or several, in turn)")
    a.add_argument("folders", nargs="+", choices=FOLDERS)
    a.add_argument("--steps", type=int, default=ADAPT_STEPS)
    a.add_argument("--tag", default="", help="run into adapt<TAG>/ (a setting of the defaults study)")
    a.add_argument("--extra-args", default="", help="pretrain options beside the defaults, e.g. '--base-tau 0.99'")
    r = sub.add_parser("run", help="every shape, encoder and label count")
    r.add_argument("--shots", default="1,2,5,10,20")
    r.add_argument("--draws", type=int, default=40)
    r.add_argument("--shapes", default="", help="comma list (default: all)")
    r.add_argument("--encoders", default="", help="'base', 'base + 15 min' (default: both where adapted)")
    r.add_argument("--tags", default="", help="comma list of adapt --tag runs to measure beside (encoders "
                   "'base + 15 min<TAG>')")
    r.add_argument("--methods", default="", help="semicolon list of candidates (logistic always)")
    r.add_argument("--keep", action="store_true", help="add to --out's results instead of starting afresh")
    r.add_argument("--out", type=Path, default=WORK / "result.json")
    t = sub.add_parser("report", help="the tables of BENCHMARKS.md from run --out files")
    t.add_argument("files", nargs="+", type=Path)
    t.add_argument("--shots", default="1,2,5,10,20")
    args = ap.parse_args()
    if args.cmd == "report":
        print(report(args.files, [int(s) for s in args.shots.split(",")]))
    elif args.cmd == "run":
        import torch

        torch.set_num_threads(1)
        run(args)
    elif args.cmd == "build":
        for name in FOLDERS:
            paths, kinds = collection(name)
            sizes = {k: kinds.count(k) for k in sorted(set(kinds))}
            print(f"{name}: {len(paths)} photos, {len(sizes)} kinds, {min(sizes.values())}-{max(sizes.values())} each")
    elif args.cmd == "adapt":
        for name in args.folders:
            print(f"{name}: {adapt(name, args.steps, args.extra_args.split(), args.tag)}", flush=True)


if __name__ == "__main__":
    main()
