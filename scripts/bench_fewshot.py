"""Few-shot classifiers on one encoder's frozen features: which one to use with 1-10 labels per class.

Embeds a labelled folder once with a checkpoint's encoder (byol.evaluate's evaluation transform; the
features are cached as .npy under --cache, keyed by the checkpoint's hash and the folder), then draws
`shots` labelled images per class from train/ `--draws` times and scores every method on the same draws
and the same test/ (or val/) images:

  logistic         byol.probe.fit_linear, weight decay 1e-4 (the probe before the few-shot classifier)
  logistic-wd=X    the same with a fixed, stronger weight decay
  prototype        nearest class mean of L2-normalised features, not centred / centred (SimpleShot)
  proto-logistic   logistic regression initialised at the centred prototypes and anchored to them
  knn              weighted kNN over the labelled images (k=200 capped at their number, t=0.1)
  fewshot          byol.probe.fit_fewshot (logistic, weight decay 1e-2 / labels per class): the few-shot
                   classifier before neighbour averaging
and, with the statistics of the whole collection (pool and test features, labels unread: what the page
holds of a folder):
  neighbours       byol/neighbours.py: fewshot on every photo's features averaged over its nearest photos of
                   the collection (100 in a collection of 4,000 or more, n / 40 in a smaller one), its
                   probabilities averaged over three tenths as many ("features only": without the second
                   average; "k=A/B": A and B whatever the size)
  neighbours or plain   that or fewshot on the plain features, whichever cross-validates better on the labels
                   (byol.neighbours.choose): what `evaluate` and the page used until
                   folders shaped like real ones showed it losing (scripts/bench_folders.py)
  neighbour-averaged k=K alpha=A   the features averaged (database-side augmentation) with other settings
  power + collection-centred   sqrt of the features, centred on the collection's mean (PT-MAP's transform)
  PCA drop K whiten G          the collection's top K principal directions dropped, the rest scaled
  soft k-means                 transductive prototypes refined on the collection; "balanced" adds PT-MAP's
                               Sinkhorn balancing of class sizes; "free clusters" adds clusters no label
                               holds, for the kinds nobody labelled (Ren et al. 2018)
  self-training    the few-shot classifier refitted on its most confident predictions over the collection
                   (pseudo-labels, ranked by its probability or by cosine to the class mean), 1 or 3 rounds
  collection-centred           L2, minus the collection's mean, L2 again (no power transform)
and, with `--views N` (N pairs of augmented views of every pool photo, embedded once and cached; the
training augmentations, crops of 8-100% or whole images):
  learned whitening  features whitened by the covariance of the differences between two augmented views of
                   the same photo (Radenovic et al. 2018's learned whitening from matching pairs, the pairs
                   made by augmentation): directions the augmentations move (colour, layout) are shrunk
  augmented labels   every labelled photo joins the classifier with its augmented views as more labels
`--views` also prints search precision (P@1/P@10/P@50 of the pool's nearest neighbours of every test photo,
what a search shows, and kNN top-1) for each transform.

Prints a markdown table of top-1 (mean ± std over draws), with the negative log-likelihood and expected
calibration error of the probabilities (the page ranks and accepts by them), and writes JSON.
`--distractors` adds the photos of other classes to the collection (never labelled, never tested): a real
folder holds kinds nobody labels, and transductive methods must not be drawn off by them.

    python scripts/bench_fewshot.py runs/x/checkpoint.pt .cache/imagenette \\
        --classes n03394916,n03417042,n03425413,n03445777,n03888257 --draws 20
    python scripts/bench_fewshot.py runs/x/checkpoint.pt .cache/cifar10 --max-train 1000 --max-test 500
    python scripts/bench_fewshot.py base .cache/imagenette --classes ...      # the shipped base, no adaptation
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from byol import neighbours, probe  # noqa: E402
from byol.augment import AugmentConfig, two_views  # noqa: E402
from byol.checkpoint import file_sha256, load_encoder  # noqa: E402
from byol.evaluate import _decode, embed_folder, load_labelled  # noqa: E402


@dataclass
class Transformed:
    """A classifier on transformed features: predict_proba(x) = clf.predict_proba(transform(x))."""

    transform: Callable[[np.ndarray], torch.Tensor]
    clf: object

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.clf.predict_proba(self.transform(x))


def unit(x) -> torch.Tensor:
    """Features as float32 rows of length 1 (how the index compares them)."""
    return F.normalize(torch.as_tensor(x, dtype=torch.float32), dim=1)


PROTOTYPE = functools.partial(probe.fit_prototypes, centre=False)  # nearest class mean, not centred


def power_centred(collection: np.ndarray, beta: float = 0.5) -> Callable[[np.ndarray], torch.Tensor]:
    """Power transform of the (ReLU, non-negative) features, L2, minus the collection's mean, L2 again
    (Hu et al. 2021, "PT-MAP"; SimpleShot's centring with the mean of every photo, not of the labelled)."""
    def pt(x: np.ndarray) -> torch.Tensor:
        return F.normalize((torch.as_tensor(x, dtype=torch.float32).clamp(min=0) + 1e-6) ** beta, dim=1)

    mu = pt(collection).mean(0)
    return lambda x: F.normalize(pt(x) - mu, dim=1)


def pca_transform(collection: np.ndarray, drop: int = 0, gamma: float = 0.0) -> Callable[[np.ndarray], torch.Tensor]:
    """Centre on the collection, drop its `drop` top principal directions and scale the others by
    eigenvalue^(-gamma/2) (gamma 1: whitening), then L2."""
    u = unit(collection)
    mu = u.mean(0)
    ev, vec = torch.linalg.eigh((u - mu).T @ (u - mu) / len(u))
    ev, vec = ev.flip(0), vec.flip(1)
    scale = ev.clamp(min=1e-8) ** (-gamma / 2)
    scale[:drop] = 0
    w = vec * scale
    return lambda x: F.normalize((unit(x) - mu) @ w, dim=1)


def centred(collection: np.ndarray) -> Callable[[np.ndarray], torch.Tensor]:
    """L2, minus the collection's mean, L2 again (SimpleShot's centring with every photo's mean)."""
    mu = unit(collection).mean(0)
    return lambda x: F.normalize(unit(x) - mu, dim=1)


def learned_whitening(view_a: np.ndarray, view_b: np.ndarray, collection: np.ndarray,
                      shrink: float = 0.3) -> Callable[[np.ndarray], torch.Tensor]:
    """Whitening by the covariance of matching pairs (Radenovic et al. 2018, "Fine-tuning CNN image retrieval
    with no human annotation", sec. 3.3), the pairs being two augmented views of one photo: L2, centre on the
    collection, multiply by C^(-1/2) where C = E[(a - b)(a - b)^T] of the L2 views, shrunk toward its mean
    eigenvalue by `shrink` (256 dims from a few thousand pairs), L2 again."""
    d = unit(view_a) - unit(view_b)
    cov = d.T @ d / len(d)
    cov = (1 - shrink) * cov + shrink * cov.trace() / len(cov) * torch.eye(len(cov))
    ev, vec = torch.linalg.eigh(cov)
    p = vec @ torch.diag(ev.clamp(min=1e-10) ** -0.5) @ vec.T
    mu = unit(collection).mean(0)
    return lambda x: F.normalize((unit(x) - mu) @ p, dim=1)


def neighbour_average(collection: np.ndarray, k: int = 20, alpha: float = 3.0, rounds: int = 1,
                      chunk: int = 4096) -> Callable[[np.ndarray], torch.Tensor]:
    """Database-side augmentation (Arandjelovic & Zisserman 2012; alpha-weighted as in Radenovic et al. 2018):
    a photo's features replaced by the L2 of the weighted sum of its k nearest photos of the collection
    (itself among them, cosine^alpha weights). Photos of one kind that the encoder places close together
    pull toward their common content; what one photo alone has (its colour, its layout) is averaged out.
    `rounds` 2 averages the averaged collection again (a wider neighbourhood)."""
    col = unit(collection)
    for _ in range(rounds - 1):
        col = _average(col, col, k, alpha, chunk)
    return lambda x: _average(unit(x), col, k, alpha, chunk)


def _average(x: torch.Tensor, col: torch.Tensor, k: int, alpha: float, chunk: int) -> torch.Tensor:
    out = []
    for i in range(0, len(x), chunk):
        sim, idx = (x[i : i + chunk] @ col.T).topk(min(k, len(col)), dim=1)
        w, r = neighbours.weights(sim.numpy(), idx.numpy(), k, alpha)  # the weights the shipped classifier uses
        out.append(F.normalize((w.unsqueeze(-1) * col[r]).sum(1), dim=1))
    return torch.cat(out)


def augmented_labels(views: np.ndarray, fit: Callable) -> Callable:
    """fit on the labelled photos plus their augmented views (views: V, N_pool, D) as more labelled examples;
    needs the labelled rows' pool indices (run passes idx=)."""
    def fit_aug(x, y, c, idx):
        v = views[:, idx].reshape(-1, views.shape[-1])
        return fit(np.concatenate([np.asarray(x), v]), np.concatenate([y, np.tile(y, len(views))]), c)
    fit_aug.wants_idx = True  # type: ignore[attr-defined]
    return fit_aug


def soft_kmeans(collection: torch.Tensor, t: float = 0.1, iters: int = 20, balance: bool = False, free: int = 0):
    """Transductive prototypes: start at the labelled class means, then alternate soft assignments of
    every photo of the collection (softmax of cosine / t; with `balance`, Sinkhorn-balanced to equal class
    sizes as in PT-MAP) and prototypes = labelled + assigned features. `free` adds clusters that no label
    holds (Ren et al. 2018's distractor clusters, several of them), started at k-means++ picks of the
    collection away from the labelled means: photos of kinds nobody labelled can gather there instead of
    dragging the labelled prototypes. Predictions are over the labelled classes only."""
    def fit(x: torch.Tensor, y: np.ndarray, c: int) -> probe.LinearProbe:
        onehot = F.one_hot(torch.as_tensor(y), c).float()
        centres = F.normalize(onehot.T @ x, dim=1)
        gen = torch.Generator().manual_seed(0)
        for _ in range(free):  # k-means++: far from every centre so far
            d = (1 - collection @ centres.T).clamp(min=0).min(1).values
            centres = torch.cat([centres, collection[torch.multinomial(d ** 2 + 1e-12, 1, generator=gen)]])
        for _ in range(iters):
            p = torch.softmax(collection @ centres.T / t, dim=1)
            if balance:
                for _ in range(20):
                    p = p / p.sum(0, keepdim=True) * (len(p) / p.shape[1])
                    p = p / p.sum(1, keepdim=True)
            labelled = onehot.T @ x + p[:, :c].T @ collection
            centres = F.normalize(torch.cat([labelled, p[:, c:].T @ collection]), dim=1)
        return probe.LinearProbe((centres[:c] / 0.05).numpy(), np.zeros(c, np.float32))  # cosine / 0.05, as fit_prototypes
    return fit


def self_training(collection: torch.Tensor, rounds: int = 3, grow: int = 2, rank: str = "probability"):
    """Self-training on the collection (inductive classifier, transductive labels): fit the few-shot
    classifier on the labelled photos, then `rounds` times add, for every class, the photos of the collection
    it is most sure of as pseudo-labels (`grow` x labels per class more each round) and refit. `rank`:
    "probability" (the classifier's own) or "cosine" (to the class's mean of labelled + pseudo-labelled
    photos, so that photos far from every class, the kinds nobody labelled, rank last)."""
    def fit(x: torch.Tensor, y: np.ndarray, c: int):
        shots = max(1, len(y) // c)
        clf = probe.fit_fewshot(x, y, c)
        px, py = x, y
        for r in range(1, rounds + 1):
            p = torch.as_tensor(clf.predict_proba(collection))
            pred = p.argmax(1)
            if rank == "cosine":
                onehot = F.one_hot(torch.as_tensor(py), c).float()
                means = F.normalize(onehot.T @ F.normalize(torch.as_tensor(px), dim=1), dim=1)
                score = (F.normalize(collection, dim=1) @ means.T).gather(1, pred[:, None])[:, 0]
            else:
                score = p.max(1).values
            take = []
            for k in range(c):
                rows = torch.nonzero(pred == k)[:, 0]
                take.append(rows[score[rows].argsort(descending=True)[: grow * shots * r]])
            idx = torch.cat(take)
            px = torch.cat([torch.as_tensor(x), collection[idx]])
            py = np.concatenate([y, pred[idx].numpy()])
            clf = probe.fit_fewshot(px, py, c)
        return clf
    return fit


def on_graph(nc: neighbours.NeighbourClassifier, n_pool: int, n_test: int, chosen: bool = False) -> Callable:
    """byol/neighbours.py's classifier over the collection's neighbour graph, whose rows are the pool, then the
    test photos, then any distractors: fitted on the labelled pool rows, predicting the test rows. `chosen`:
    byol.neighbours.choose (averaged or plain by cross-validation on the labels: what the page and `evaluate`
    use) instead of always averaged."""
    test_rows = np.arange(n_pool, n_pool + n_test)

    @dataclass
    class Fitted:
        clf: neighbours.Chosen

        def predict_proba(self, x: np.ndarray) -> np.ndarray:
            assert len(x) == n_test, "predicts the test photos of the collection only"
            return self.clf.predict_proba(nc, test_rows)

    def fit(x, y, c, idx):
        return Fitted(neighbours.choose(nc, idx, y, c) if chosen else neighbours.Chosen(nc.fit(idx, y, c), True, None))
    fit.wants_idx = True  # type: ignore[attr-defined]
    return fit


def on(transform: Callable[[np.ndarray], torch.Tensor], fit: Callable) -> Callable:
    """fit on transformed features; the classifier transforms what it predicts."""
    return lambda x, y, c: Transformed(transform, fit(transform(x), y, c))


def methods(collection: np.ndarray | None = None, n_pool: int = 0, n_test: int = 0) -> dict:
    """name -> fit(x, y, num_classes) returning a classifier with predict_proba. With the collection (every
    photo's features, labelled or not: what the page holds; its rows the pool's n_pool photos, then the
    test's n_test, then any distractors) the transductive and collection-statistics methods join."""
    out = {"logistic": functools.partial(probe.fit_linear, weight_decay=1e-4)}
    for wd in (1e-3, 1e-2, 1e-1):
        out[f"logistic-wd={wd:g}"] = functools.partial(probe.fit_linear, weight_decay=wd)
    out["prototype (not centred)"] = PROTOTYPE
    out["prototype"] = probe.fit_prototypes
    for a in (1e-3, 1e-2, 1e-1):
        out[f"proto-logistic anchor={a:g}"] = functools.partial(probe.fit_proto_linear, anchor=a)
    out["knn"] = probe.fit_knn
    out["fewshot"] = probe.fit_fewshot
    if collection is None:
        return out
    graph = neighbours.exact_graph(collection)
    out["neighbours"] = on_graph(neighbours.NeighbourClassifier(graph), n_pool, n_test)
    out["neighbours or plain"] = on_graph(neighbours.NeighbourClassifier(graph), n_pool, n_test, chosen=True)
    out["neighbours, features only"] = on_graph(neighbours.NeighbourClassifier(graph, k_predictions=1), n_pool, n_test)
    for kf, kp in ((100, 30), (50, 15), (20, 6), (10, 3)):  # fixed, whatever the collection's size
        out[f"neighbours k={kf}/{kp}"] = on_graph(neighbours.NeighbourClassifier(graph, kf, kp), n_pool, n_test)
    pt = power_centred(collection)
    out["power + collection-centred, prototype"] = on(pt, PROTOTYPE)  # on features the transform centred
    out["power + collection-centred, logistic"] = on(pt, functools.partial(probe.fit_linear, weight_decay=1e-4))
    for drop, gamma in ((0, 0.5), (1, 0.0), (2, 0.0)):
        t = pca_transform(collection, drop, gamma)
        out[f"PCA drop {drop} whiten {gamma:g}, prototype"] = on(t, PROTOTYPE)
    for name, t in (("", unit), ("power + centred, ", pt)):
        col = t(collection)
        out[f"{name}soft k-means on the collection"] = on(t, soft_kmeans(col))
        out[f"{name}balanced soft k-means (PT-MAP-like)"] = on(t, soft_kmeans(col, balance=True))
        for free in (5, 20):
            out[f"{name}soft k-means + {free} free clusters"] = on(t, soft_kmeans(col, free=free))
    col = torch.as_tensor(collection, dtype=torch.float32)
    for rank in ("probability", "cosine"):
        for rounds, grow in ((1, 2), (3, 2), (3, 5)):
            out[f"self-training by {rank}, {rounds} rounds x{grow}"] = self_training(col, rounds, grow, rank)
    ct = centred(collection)
    out["collection-centred, prototype"] = on(ct, PROTOTYPE)
    out["collection-centred, fewshot"] = on(ct, probe.fit_fewshot)
    for k, alpha, rounds in ((10, 3.0, 1), (20, 3.0, 1), (50, 3.0, 1), (30, 5.0, 1), (20, 3.0, 2), (10, 3.0, 2)):
        t = neighbour_average(collection, k, alpha, rounds)
        name = f"neighbour-averaged k={k} alpha={alpha:g}" + (f" x{rounds}" if rounds > 1 else "")
        out[f"{name}, logistic"] = on(t, functools.partial(probe.fit_linear, weight_decay=1e-4))
        out[f"{name}, fewshot"] = on(t, probe.fit_fewshot)
        out[f"{name}, prototype"] = on(t, PROTOTYPE)
    return out


def view_methods(views: dict[str, np.ndarray], collection: np.ndarray) -> tuple[dict, dict]:
    """(few-shot methods, transforms for the search table) from augmented views of the pool photos:
    views[crop] is 2V, N_pool, D (V pairs; crop "0.08": the training crops, "1": whole photos)."""
    fits, transforms = {}, {}
    for crop, v in views.items():
        half = len(v) // 2
        for shrink in (0.1, 0.3):
            t = learned_whitening(v[:half].reshape(-1, v.shape[-1]), v[half:].reshape(-1, v.shape[-1]), collection,
                                  shrink)
            name = f"learned whitening, crops {crop}-1, shrink {shrink:g}"
            transforms[name] = t
            fits[f"{name}, prototype"] = on(t, PROTOTYPE)
            fits[f"{name}, fewshot"] = on(t, probe.fit_fewshot)
        fits[f"augmented labels, crops {crop}-1, logistic"] = augmented_labels(
            v, functools.partial(probe.fit_linear, weight_decay=1e-4))
        fits[f"augmented labels, crops {crop}-1, fewshot"] = augmented_labels(v, probe.fit_fewshot)
    return fits, transforms



# ----------------------------------------------------------------------------------------------------------
# features, embedded once
# ----------------------------------------------------------------------------------------------------------
def subsample(y: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    if not per_class:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]))


def select(folder: Path, classes: list[str] | None, max_train: int | None,
           max_test: int | None) -> tuple[list[str], np.ndarray, list[str], np.ndarray, list[str]]:
    """(pool paths, pool labels, test paths, test labels, class names) of the labelled folder: the classes kept,
    renumbered in --classes' order, and subsampled per class."""
    train_paths, train_y, test_paths, test_y, names = load_labelled(folder)
    if classes:
        missing = sorted(set(classes) - set(names))
        if missing:
            raise SystemExit(f"--classes: no folder for {', '.join(missing)} in {folder}/train")
        keep = [names.index(c) for c in classes]
        remap = {old: new for new, old in enumerate(keep)}
        tr = np.isin(train_y, keep)
        te = np.isin(test_y, keep)
        train_paths = [p for p, k in zip(train_paths, tr) if k]
        test_paths = [p for p, k in zip(test_paths, te) if k]
        train_y = np.array([remap[v] for v in train_y[tr]])
        test_y = np.array([remap[v] for v in test_y[te]])
        names = list(classes)
    tr = subsample(train_y, max_train, 0)
    te = subsample(test_y, max_test, 1)
    return [train_paths[i] for i in tr], train_y[tr], [test_paths[i] for i in te], test_y[te], names


def features(checkpoint: Path, folder: Path, classes: list[str] | None, max_train: int | None,
             max_test: int | None, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    train_paths, train_y, test_paths, test_y, names = select(folder, classes, max_train, max_test)
    key = hashlib.sha256(json.dumps([file_sha256(checkpoint), train_paths, test_paths]).encode()).hexdigest()[:16]
    files = {n: cache / f"{key}.{n}.npy" for n in ("train_x", "train_y", "test_x", "test_y")}
    if all(f.exists() for f in files.values()):
        print(f"features from {cache}/{key}.*.npy", file=sys.stderr)
        return (*(np.load(files[n]) for n in ("train_x", "train_y", "test_x", "test_y")), names)
    encoder, preprocess, info = load_encoder(checkpoint)
    t0 = time.perf_counter()
    a = embed_folder(encoder, preprocess, train_paths, precision="fp32")
    b = embed_folder(encoder, preprocess, test_paths, precision="fp32")
    print(f"embedded {len(a.kept) + len(b.kept)} images in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out = {"train_x": a.features, "train_y": train_y[a.kept], "test_x": b.features, "test_y": test_y[b.kept]}
    cache.mkdir(parents=True, exist_ok=True)
    for n, v in out.items():
        np.save(files[n], v)
    (cache / f"{key}.json").write_text(json.dumps({"checkpoint": str(checkpoint), "step": info["step"],
                                                   "folder": str(folder), "classes": names}, indent=1))
    return out["train_x"], out["train_y"], out["test_x"], out["test_y"], names


def augmented_views(checkpoint: Path, train_paths: list[str], pairs: int, crop: float, cache: Path) -> np.ndarray:
    """2*pairs, N_pool, D embeddings of augmented views of every pool photo (pairs x view 1, then pairs x
    view 2: the training augmentations at the evaluation size, crops of `crop`-100% of the area), cached."""
    key = hashlib.sha256(json.dumps([file_sha256(checkpoint), train_paths, pairs, crop]).encode()).hexdigest()[:16]
    file = cache / f"{key}.views.npy"
    if file.exists():
        return np.load(file)
    encoder, pre, _ = load_encoder(checkpoint)
    pixels, kept, bad = _decode(train_paths, pre, None, progress=False)
    if bad:  # the pool's features skipped the same files, so rows still line up
        print(f"{len(bad)} unreadable pool images skipped", file=sys.stderr)
    cfg = AugmentConfig(image_size=pre.size, crop_scale=(crop, 1.0), mean=pre.mean, std=pre.std)
    gen = torch.Generator().manual_seed(0)
    a, b = [], []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(pairs):
            for i in range(0, len(pixels), 256):
                v1, v2 = two_views(torch.from_numpy(pixels[i : i + 256]), cfg, gen)
                a.append(encoder(v1).flatten(1))
                b.append(encoder(v2).flatten(1))
    dim = a[0].shape[1]
    out = torch.cat(a + b).numpy().reshape(2 * pairs, len(pixels), dim)
    print(f"embedded {2 * pairs} augmented views of {len(pixels)} photos in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(file, out)
    return out


def search_precision(transforms: dict, train_x, train_y, test_x, test_y, ks=(1, 10, 50)) -> dict:
    """Per transform: the share of each test photo's k nearest pool photos (cosine) of its class, and kNN top-1."""
    out = {}
    for name, t in transforms.items():
        a, b = t(train_x), t(test_x)
        idx = (b @ a.T).topk(max(ks), dim=1).indices
        hit = (torch.as_tensor(train_y)[idx] == torch.as_tensor(test_y)[:, None]).float()
        out[name] = {f"P@{k}": float(hit[:, :k].mean()) for k in ks}
        out[name]["knn"] = probe.knn_top1(a.numpy(), train_y, b.numpy(), test_y)
    return out


# ----------------------------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------------------------
def calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top probability (Guo et al. 2017), equal-width bins."""
    conf, correct = p.max(1), (p.argmax(1) == y)
    edges = np.minimum((conf * bins).astype(int), bins - 1)
    return float(sum(abs(correct[edges == i].mean() - conf[edges == i].mean()) * (edges == i).mean()
                     for i in range(bins) if (edges == i).any()))


def run(train_x, train_y, test_x, test_y, shots: list[int], draws: int, seed: int, fits: dict) -> dict:
    c = int(train_y.max()) + 1
    scores: dict = {name: {n: [] for n in shots} for name in fits}
    for n in shots:
        rng = np.random.default_rng(seed + n)
        for d in range(draws):
            idx = probe._draw(train_y, n, rng)
            for name, fit in fits.items():
                t0 = time.perf_counter()
                extra = {"idx": idx} if getattr(fit, "wants_idx", False) else {}
                p = fit(train_x[idx], train_y[idx], c, **extra).predict_proba(test_x)
                nll = float(-np.log(p[np.arange(len(test_y)), test_y].clip(min=1e-12)).mean())
                scores[name][n].append({"top1": float((p.argmax(1) == test_y).mean()), "nll": nll,
                                        "ece": calibration_error(p, test_y), "seconds": time.perf_counter() - t0})
            print(f"{n}-shot draw {d + 1}/{draws}", file=sys.stderr, end="\r")
    out: dict = {}
    for name, by_shot in scores.items():
        out[name] = {}
        for n, rows in by_shot.items():
            top1 = np.array([r["top1"] for r in rows])
            out[name][str(n)] = {"mean": float(top1.mean()), "std": float(top1.std()), "top1": top1.tolist(),
                                 "nll": float(np.mean([r["nll"] for r in rows])),
                                 "ece": float(np.mean([r["ece"] for r in rows])),
                                 "seconds": float(np.mean([r["seconds"] for r in rows]))}
    return out


def table(result: dict, shots: list[int]) -> str:
    head = "| method | " + " | ".join(f"{n}-shot top-1" for n in shots) + " | " + \
           " | ".join(f"{n}-shot NLL / ECE" for n in shots) + " |"
    lines = [head, "|---" * (1 + 2 * len(shots)) + "|"]
    for name, by_shot in result.items():
        cells = [f"{100 * by_shot[str(n)]['mean']:.1f} ± {100 * by_shot[str(n)]['std']:.1f}" for n in shots]
        cells += [f"{by_shot[str(n)]['nll']:.2f} / {by_shot[str(n)]['ece']:.2f}" for n in shots]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="checkpoint.pt of `byol-search pretrain` (read, never written), "
                                                  "or 'base': the shipped base encoder alone")
    ap.add_argument("folder", type=Path, help="labelled folder: train/<class>/ and test/<class>/ (or val/)")
    ap.add_argument("--classes", default="", help="comma-separated class folders to keep (default: all)")
    ap.add_argument("--shots", default="1,5,10", help="labelled images per class (default 1,5,10)")
    ap.add_argument("--draws", type=int, default=20, help="random draws per shot count (default 20)")
    ap.add_argument("--max-train", type=int, default=None, help="at most this many train images per class")
    ap.add_argument("--max-test", type=int, default=None, help="at most this many test images per class")
    ap.add_argument("--methods", default="",
                    help="semicolon-separated subset of the methods, by name as the table prints it (names hold "
                         "commas), e.g. 'logistic;fewshot;power + centred, soft k-means on the collection' "
                         "(default: all)")
    ap.add_argument("--distractors", default="",
                    help="comma-separated class folders whose photos (train and test) join the collection unlabelled, "
                         "as the other kinds of a real folder would: what the transductive methods must survive")
    ap.add_argument("--views", type=int, default=0,
                    help="pairs of augmented views of every pool photo to embed (0: none); adds learned whitening, "
                         "augmented labels and a search-precision table")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache/fewshot", help="where features are cached")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON result (default: CACHE/result-<folder>.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if str(args.checkpoint) == "base":
        from bench_quality import untrained_checkpoint

        args.cache.mkdir(parents=True, exist_ok=True)
        args.checkpoint = untrained_checkpoint(args.cache / "base-alone.pt", "base")

    classes = [c for c in args.classes.split(",") if c]
    shots = [int(s) for s in args.shots.split(",") if s]
    train_x, train_y, test_x, test_y, names = features(args.checkpoint, args.folder, classes, args.max_train,
                                                       args.max_test, args.cache)
    collection = [train_x, test_x]  # the collection: pool and test photos, labels unread
    distractors = [c for c in args.distractors.split(",") if c]
    if set(distractors) & set(classes):
        raise SystemExit(f"--distractors: {', '.join(sorted(set(distractors) & set(classes)))} also in --classes")
    if distractors:  # photos of other kinds, never labelled nor tested
        dx, _, dt, _, _ = features(args.checkpoint, args.folder, distractors, args.max_train, args.max_test, args.cache)
        collection += [dx, dt]
    fits = methods(np.concatenate(collection), len(train_x), len(test_x))
    transforms: dict = {"L2 (as indexed)": unit}
    for k in (10, 20, 50):
        transforms[f"neighbour-averaged k={k} alpha=3"] = neighbour_average(np.concatenate(collection), k)
    if args.views:
        pool_paths = select(args.folder, classes, args.max_train, args.max_test)[0]
        views = {f"{crop:g}": augmented_views(args.checkpoint, pool_paths, args.views, crop, args.cache)
                 for crop in (0.08, 1.0)}
        extra, extra_t = view_methods(views, np.concatenate(collection))
        fits.update(extra)
        transforms = {**transforms, "collection-centred": centred(np.concatenate(collection)), **extra_t}
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(";") if m.strip()]
        unknown = sorted(set(wanted) - set(fits))
        if unknown:
            raise SystemExit(f"--methods: no method {', '.join(map(repr, unknown))}; choose from: {'; '.join(fits)}")
        fits = {k: v for k, v in fits.items() if k in wanted}
    t0 = time.perf_counter()
    result = run(train_x, train_y, test_x, test_y, shots, args.draws, args.seed, fits)
    text = table(result, shots)
    print(f"\n{args.folder} ({len(names)} classes; pool {len(train_y)}, test {len(test_y)} images; "
          f"collection {sum(len(c) for c in collection)}; "
          f"{args.draws} draws; dim {train_x.shape[1]}; {time.perf_counter() - t0:.0f} s)\n")
    print(text)
    search = search_precision(transforms, train_x, train_y, test_x, test_y) if transforms else {}
    if search:
        cols = list(next(iter(search.values())))
        print("\n| features | " + " | ".join(cols) + " |\n" + "|---" * (1 + len(cols)) + "|")
        for name, row in search.items():
            print(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in row.values()) + " |")
    out = args.out or args.cache / f"result-{args.folder.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "sha256": file_sha256(args.checkpoint),
                               "folder": str(args.folder), "classes": names, "shots": shots, "draws": args.draws,
                               "n_pool": int(len(train_y)), "n_test": int(len(test_y)), "distractors": distractors,
                               "n_collection": int(sum(len(c) for c in collection)), "methods": result,
                               "views": args.views, "search": search},
                              indent=1))
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
