"""The few-shot classifier over a collection: features and predictions averaged over each photo's neighbours.

A photo's embedding carries its kind and also what is its own: its colour, its framing, its background. With
one to ten labels per class a classifier cannot tell the two apart, so it learns the colour of the few photos
it was shown. The rest of the collection can: photos of one kind that the encoder places near each other
share their kind and differ in the rest. Two averages over each photo's nearest photos in the collection
(its neighbour graph, the neighbours a search shows) use that, before and after the classifier:
  features     database-side augmentation (Arandjelovic & Zisserman 2012, "Three things everyone should
               know to improve object retrieval", sec. 4; weighted as Radenovic et al. 2018's alpha-QE): every
               photo's embedding becomes the L2-normalised sum of its K_FEATURES nearest photos (itself
               first), each weighted by cosine^ALPHA, so what neighbours share adds up and what one photo has
               alone averages out. The few-shot classifier (byol.probe.fit_fewshot) fits and predicts on these.
  predictions  a photo's probabilities become the cosine^ALPHA-weighted mean of its K_PREDICTIONS nearest
               photos' probabilities (itself first): one step of label propagation (Zhou et al. 2004) that
               stays a probability. The classifier's logits are doubled first (SHARPEN), which makes the
               confidence a calibrated probability again.
No label is read by either average, so a photo's averaged embedding does not depend on which photos are
labelled; only the classifier does. Where the encoder's neighbourhoods mix kinds, averaging misleads; with two
or more labels per class, cross-validation on them picks between this classifier and the plain one (`choose`).

The page no longer trains it: on folders shaped like real ones (scripts/bench_folders.py: 10-20 kinds of 60-100
photos, kinds of 30 to 800, kinds nobody labels, bursts; BENCHMARKS.md, "The few-shot classifier on folders
shaped like real ones") `choose` lost up to 2.7 points to plain logistic regression at 5 and 10 labels per
kind, and neither a neighbourhood of fixed size, a mixture with the plain classifier nor label propagation
held level with it everywhere. The page trains byol.probe.fit_page; a probe that this classifier stored
still predicts through `NeighbourClassifier.predict_proba`, and the benchmarks measure it.

Measured with `scripts/bench_fewshot.py` (5 held-out Imagenette classes, 6,750 photos, 40 draws; BENCHMARKS.md,
"The few-shot classifier over the neighbour graph"): over plain logistic regression, +6.3 points at 1 label per
class and +6.3 at 5 on the default encoder (the sixth base + 15 minutes), +5.1 / +5.7 on the fifth base + 15
minutes, where the features averaged alone give +4.4 / +4.8; K_FEATURES from 50 to 200 and K_PREDICTIONS from
10 to 100 land within a point. With as many photos of kinds nobody
labels in the collection the gain halves and stays a gain. A small collection averages over fewer
(`neighbourhood`). Searching still uses the plain embeddings: averaging costs P@1 (a photo's nearest
neighbour becomes its neighbourhood's).

Public API
    K_FEATURES, K_PREDICTIONS, ALPHA   the measured defaults; neighbourhood(n): the k for n photos
    Graph                              each photo's neighbours: scores, rows (best first) and the embeddings
    exact_graph(vectors, k)            the graph by exact cosine search in torch (evaluation)
    NeighbourClassifier(graph)         fit(rows, y) -> classifier; predict_proba(classifier, rows)
    choose(nc, rows, y) -> Chosen      the page's and `evaluate`'s classifier: the neighbours' or the plain one,
                                       by cross-validation on the labels
    few_shot_top1(...)                 evaluation's few-shot rows with it
    cross_val_accuracy(...)            the neighbour classifier's cross-validated accuracy
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from byol import probe

K_FEATURES = 100  # neighbours whose embeddings are averaged, the photo itself among them (at most)
K_PREDICTIONS = 30  # neighbours whose probabilities are averaged (at most)
ALPHA = 3.0  # weight cosine^alpha: close neighbours count most, far ones next to nothing
K_GRAPH = max(K_FEATURES, K_PREDICTIONS)
# the fitted logits are multiplied by this: fit_fewshot's penalty (chosen on weaker encoders) and the average
# of neighbours' probabilities leave the confidence 15 points below the accuracy; doubled, the expected
# calibration error falls from 0.20 / 0.17 / 0.12 to 0.10 / 0.03 / 0.04 at 1 / 5 / 10 labels per class on
# the default encoder and from 0.19 / 0.18 / 0.14 to 0.11 / 0.04 / 0.03 on the base alone (10 draws each;
# 1.5 and 2.5 are worse on both). The argmax, and so top-1, does not change. The plain classifier that `choose`
# may keep is as under-confident and is doubled too: 0.12-0.22 -> 0.05-0.10 at 2 to 10 labels on the default
# encoder, all of Imagenette and CIFAR-10 (10 draws each).
SHARPEN = 2.0
PHOTOS_PER_NEIGHBOUR = 40  # a smaller collection averages over fewer: one neighbour per 40 photos, 5 at least


def neighbourhood(n: int) -> tuple[int, int]:
    """(k_features, k_predictions) for a collection of n photos.

    A neighbourhood must stay inside one kind of photo. Measured on collections cut from the held-out
    Imagenette classes (BENCHMARKS.md; points over logistic regression at 1 / 5 labels): at 500 photos k = 100
    gains +1.8 / +1.7 where n / 40 = 12 gains +3.7 / +2.9, at 200 photos k = 100 gives +0.3 / -2.1 where 5
    gives +4.0 / +5.2, and at 1,860 photos k from 20 to 100 all gain about 5. So k follows the collection,
    n / 40 (5 at least, K_FEATURES at most), and the probabilities are averaged over three tenths of it, as at
    the full size (100 and 30).
    """
    k = min(K_FEATURES, max(5, n // PHOTOS_PER_NEIGHBOUR))
    return k, min(K_PREDICTIONS, max(1, round(0.3 * k)))


@dataclass
class Graph:
    """Each photo's nearest photos of the collection, best first (itself first, cosine 1).

    scores (n,k) float32 cosines; rows (n,k) int32 row numbers into `vectors`, -1 for a missing slot (a
    collection smaller than k); vectors (n,d) float32 unit embeddings. Row i of all three is the same photo.
    """

    scores: np.ndarray
    rows: np.ndarray
    vectors: np.ndarray

    def __post_init__(self) -> None:
        if self.scores.shape != self.rows.shape or self.scores.ndim != 2 or len(self.scores) != len(self.vectors):
            raise ValueError(f"graph shapes disagree: scores {self.scores.shape}, rows {self.rows.shape}, "
                             f"vectors {self.vectors.shape}")

    def __len__(self) -> int:
        return len(self.vectors)


def weights(scores: np.ndarray, rows: np.ndarray, k: int, alpha: float = ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
    """(w (n,k) cosine^alpha, zero for missing or negative neighbours; rows (n,k) with missing ones at 0)."""
    s = torch.as_tensor(np.ascontiguousarray(scores[:, :k], np.float32))
    r = torch.as_tensor(np.ascontiguousarray(rows[:, :k], np.int64))
    w = torch.nan_to_num(s, neginf=0.0).clamp(min=0) ** alpha * (r >= 0)
    return w, r.clamp(min=0)


def average_features(graph: Graph, k: int = K_FEATURES, alpha: float = ALPHA, chunk: int = 1024) -> np.ndarray:
    """Every photo's embedding averaged over its k nearest (n,d), L2-normalised (see the module docstring)."""
    v = torch.as_tensor(graph.vectors)
    out = []
    for i in range(0, len(graph), chunk):
        w, r = weights(graph.scores[i : i + chunk], graph.rows[i : i + chunk], k, alpha)
        out.append(F.normalize((w.unsqueeze(-1) * v[r]).sum(1), dim=1))  # chunk, d (from chunk, k, d: ~100 MB)
    return torch.cat(out).numpy() if out else np.zeros((0, graph.vectors.shape[1]), np.float32)


def average_predictions(proba: np.ndarray, graph: Graph, rows: np.ndarray, k: int = K_PREDICTIONS,
                        alpha: float = ALPHA) -> np.ndarray:
    """The probabilities of `rows` averaged over their k nearest photos (len(rows), C).

    proba (n,C): every photo's own probabilities (only the neighbours of `rows` are read)."""
    w, r = weights(graph.scores[rows], graph.rows[rows], k, alpha)
    w = w / w.sum(1, keepdim=True).clamp(min=1e-12)
    p = torch.as_tensor(proba)[r]  # len(rows), k, C
    out: np.ndarray = (w.unsqueeze(-1) * p).sum(1).numpy()
    return out


@torch.no_grad()
def exact_graph(vectors: npt.ArrayLike, k: int = K_GRAPH, chunk: int = 512) -> Graph:
    """The neighbour graph of a collection by exact cosine (torch matmul + topk), for evaluation's folders."""
    v = F.normalize(torch.as_tensor(np.ascontiguousarray(vectors, np.float32)), dim=1)
    k = min(k, len(v))
    s_out, r_out = [], []
    for i in range(0, len(v), chunk):
        s, r = (v[i : i + chunk] @ v.T).topk(k, dim=1)  # chunk x n cosines: 100 MB at 50,000 photos
        s_out.append(s)
        r_out.append(r.int())
    scores = torch.cat(s_out).numpy() if s_out else np.zeros((0, k), np.float32)
    rows = torch.cat(r_out).numpy() if r_out else np.zeros((0, k), np.int32)
    return Graph(scores, rows, v.numpy())


@dataclass
class NeighbourClassifier:
    """The few-shot classifier on a collection's neighbour graph (module docstring): what the page and
    `evaluate` use. The averaged features are computed once; fitting and predicting then cost what the
    plain classifier costs, plus one weighted mean per predicted photo."""

    graph: Graph
    k_features: int | None = None  # None: neighbourhood(len(graph))
    k_predictions: int | None = None
    sharpen: float = SHARPEN
    features: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        auto = neighbourhood(len(self.graph))
        self.k_features = auto[0] if self.k_features is None else self.k_features
        self.k_predictions = auto[1] if self.k_predictions is None else self.k_predictions
        self.features = average_features(self.graph, int(self.k_features))

    def fit(self, rows: npt.ArrayLike, y: npt.ArrayLike, num_classes: int | None = None) -> probe.LinearProbe:
        """byol.probe.fit_fewshot on the averaged features of the labelled `rows`, its logits times `sharpen`."""
        clf = probe.fit_fewshot(self.features[np.asarray(rows, np.int64)], y, num_classes)
        return probe.LinearProbe(clf.weight * self.sharpen, clf.bias * self.sharpen)

    def predict_proba(self, clf: probe.LinearProbe, rows: npt.ArrayLike | None = None) -> np.ndarray:
        """Probabilities (len(rows), C) of `rows` (default: every photo), averaged over their neighbours."""
        rows = np.arange(len(self.graph)) if rows is None else np.asarray(rows, np.int64)
        k = int(self.k_predictions or 1)
        if k <= 1:
            return clf.predict_proba(self.features[rows])
        need = np.unique(self.graph.rows[rows, :k])  # the neighbours read
        need = need[need >= 0]
        own = np.zeros((len(self.graph), len(clf.bias)), np.float32)
        own[need] = clf.predict_proba(self.features[need])
        parts = [average_predictions(own, self.graph, rows[i : i + 8192], k) for i in range(0, len(rows), 8192)]
        return np.concatenate(parts) if parts else np.zeros((0, len(clf.bias)), np.float32)


@dataclass
class Chosen:
    """The few-shot classifier fitted on some labels: over the neighbour graph, or on the plain embeddings
    when cross-validation on the labels says the neighbourhoods mislead (see `choose`); logits sharpened."""

    probe: probe.LinearProbe
    averaged: bool  # True: fitted on averaged embeddings, probabilities averaged over the neighbours
    accuracy: float | None  # its cross-validated accuracy on the labels; None with one label per class

    def predict_proba(self, nc: NeighbourClassifier, rows: npt.ArrayLike | None = None) -> np.ndarray:
        rows = np.arange(len(nc.graph)) if rows is None else np.asarray(rows, np.int64)
        if self.averaged:
            return nc.predict_proba(self.probe, rows)
        return self.probe.predict_proba(nc.graph.vectors[rows])


def choose(nc: NeighbourClassifier, rows: np.ndarray, y: np.ndarray, num_classes: int | None = None,
           folds: int = 5) -> Chosen:
    """The few-shot classifier of the page and `evaluate`: the neighbour classifier, unless the plain one
    (byol.probe.fit_fewshot on the embeddings as they are) is more accurate in cross-validation on the labels.

    Averaging helps where the encoder's neighbourhoods hold one kind and misleads where they mix kinds: on the
    held-out Imagenette classes it gains 5 to 7 points at 1 to 5 labels per class, but on collections of 10
    kinds of 80 photos (CIFAR-10, all of Imagenette) it loses up to 6 points at 10 labels. The labels tell
    which case a folder is: with two or more per class, the classifier with the better cross-validated
    accuracy is kept (ties: the neighbours'); with one, there is nothing to compare and the neighbours' is
    kept (it gained 5 to 7 points at 1 label on the held-out classes and lost at most 0.4 on the mixed ones).
    Measured: BENCHMARKS.md, "The few-shot classifier over the neighbour graph".
    """
    rows, y = np.asarray(rows, np.int64), np.asarray(y)
    c = int(num_classes if num_classes is not None else y.max() + 1)
    cv_averaged = cross_val_accuracy(nc, rows, y, folds)
    cv_plain = probe.cross_val_accuracy(nc.graph.vectors[rows], y, folds, method="fewshot")
    if cv_averaged is None or cv_plain is None or cv_averaged >= cv_plain:
        return Chosen(nc.fit(rows, y, c), True, cv_averaged)
    plain = probe.fit_fewshot(nc.graph.vectors[rows], y, c)
    return Chosen(probe.LinearProbe(plain.weight * nc.sharpen, plain.bias * nc.sharpen), False, cv_plain)


def few_shot_top1(nc: NeighbourClassifier, pool_rows: np.ndarray, pool_y: np.ndarray, test_rows: np.ndarray,
                  test_y: np.ndarray, shots: int, draws: int = 5, seed: int = 0) -> tuple[float, float]:
    """(mean, std) top-1 of `choose`'s classifier over draws of `shots` labelled pool photos per class; the
    draws are byol.probe.few_shot_top1's for the same seed, so the two compare on the same labelled photos."""
    pool_y, test_y = np.asarray(pool_y), np.asarray(test_y)
    num_classes = int(max(pool_y.max(), test_y.max())) + 1
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(draws):
        idx = probe._draw(pool_y, shots, rng)
        chosen = choose(nc, pool_rows[idx], pool_y[idx], num_classes)
        accs.append(float((chosen.predict_proba(nc, test_rows).argmax(1) == test_y).mean()))
    return float(np.mean(accs)), float(np.std(accs))


def cross_val_accuracy(nc: NeighbourClassifier, rows: np.ndarray, y: np.ndarray, folds: int = 5,
                       seed: int = 0) -> float | None:
    """k-fold accuracy of the classifier on labelled `rows` (byol.probe.cv_folds, the plain estimate's folds):
    each held-out photo predicted by a classifier fitted without it. None when it cannot be estimated."""
    rows, y = np.asarray(rows, np.int64), np.asarray(y)
    split = probe.cv_folds(y, folds, seed)
    if split is None:
        return None
    correct = 0
    num_classes = int(y.max()) + 1
    for train, test in split:
        clf = nc.fit(rows[train], y[train], num_classes)
        correct += int((nc.predict_proba(clf, rows[test]).argmax(1) == y[test]).sum())
    return correct / len(y)
