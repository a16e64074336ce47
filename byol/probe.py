"""kNN, linear-probe and few-shot maths on frozen embeddings, shared by evaluation and by the page's labelling.

The field's protocol (Wu et al. 2018, used by lightly, solo-learn and DINO): features L2-normalised,
weighted kNN with k=200 and temperature 0.1, votes weighted by exp(cos / t); and a linear probe
(multinomial logistic regression) on frozen features.

With a handful of labels per class a plain logistic regression is the weakest choice (the CLIP paper's
few-shot curves, Radford et al. 2021, sec. 3.2.5): `fit_fewshot` starts from the class prototypes (nearest
class mean, Snell et al. 2017; centred as in SimpleShot, Wang et al. 2019) and fits a logistic regression
pulled toward them, so one label per class already gives the prototypes' accuracy and more labels move the
boundary where the data says. Every classifier here is a `LinearProbe`: the page stores any of them alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

Features: TypeAlias = "npt.ArrayLike | torch.Tensor"  # N, D embeddings (normalised here where it matters)
Labels: TypeAlias = "npt.ArrayLike"  # N class indices


class Classifier(Protocol):
    """What every few-shot method returns: LinearProbe or KnnClassifier."""

    def predict_proba(self, x: Features) -> np.ndarray: ...

    def predict(self, x: Features) -> tuple[np.ndarray, np.ndarray]: ...


def _tensor(x: Features) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32)) if not torch.is_tensor(x) else x.float()


@torch.no_grad()
def knn_predict(
    train_x: Features, train_y: Labels, test_x: Features, num_classes: int, k: int = 200, t: float = 0.1,
    chunk: int = 1024,
) -> np.ndarray:
    """Weighted kNN class scores: N_test x num_classes (higher is more likely)."""
    train_x = F.normalize(_tensor(train_x), dim=1)
    test_x = F.normalize(_tensor(test_x), dim=1)
    train_y = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    k = min(k, train_x.shape[0])
    out = []
    for i in range(0, test_x.shape[0], chunk):
        sim = test_x[i : i + chunk] @ train_x.T  # B, N_train
        w, idx = sim.topk(k, dim=1)  # B, k
        w = (w / t).exp()
        onehot = F.one_hot(train_y[idx], num_classes).float()  # B, k, C
        out.append((onehot * w.unsqueeze(-1)).sum(1))
    return torch.cat(out).numpy()


def knn_top1(train_x: Features, train_y: Labels, test_x: Features, test_y: Labels, k: int = 200, t: float = 0.1) -> float:
    num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    scores = knn_predict(train_x, train_y, test_x, num_classes, k, t)
    return float((scores.argmax(1) == np.asarray(test_y)).mean())


@dataclass
class LinearProbe:
    """Multinomial logistic regression on L2-normalised features: softmax(W x + b)."""

    weight: np.ndarray  # C, D
    bias: np.ndarray  # C

    @torch.no_grad()
    def predict_proba(self, x: Features, chunk: int = 65536) -> np.ndarray:
        """N,D features -> N,C probabilities."""
        x = _tensor(x)
        w, b = torch.as_tensor(self.weight), torch.as_tensor(self.bias)
        out = [torch.softmax(F.normalize(x[i : i + chunk], dim=1) @ w.T + b, dim=1) for i in range(0, len(x), chunk)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.bias)), np.float32)

    def predict(self, x: Features) -> tuple[np.ndarray, np.ndarray]:
        """N,D -> (class index, confidence = max probability)."""
        p = self.predict_proba(x)
        return p.argmax(1), p.max(1)


def fit_linear(x: Features, y: Labels, num_classes: int | None = None, weight_decay: float = 1e-4,
               max_iter: int = 200) -> LinearProbe:
    """Fit a logistic regression with full-batch L-BFGS on L2-normalised features.

    Minimises cross-entropy(x W^T + b) + weight_decay * ||W||^2 (the bias is not penalised), from zero
    weights, on the unit-length features as they are: no scaling or temperature. A cosine in [-1, 1] needs
    large weights for confident predictions, which the weak penalty allows; L-BFGS with a strong-Wolfe line
    search reaches them in a few dozen iterations (at most max_iter).
    """
    x = F.normalize(_tensor(x), dim=1)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    c = int(num_classes if num_classes is not None else y.max().item() + 1)
    w = torch.zeros(c, x.shape[1], requires_grad=True)
    b = torch.zeros(c, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(w.detach().numpy().copy(), b.detach().numpy().copy())


def linear_top1(train_x: Features, train_y: Labels, test_x: Features, test_y: Labels, weight_decay: float = 1e-4) -> float:
    num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    probe = fit_linear(train_x, train_y, num_classes, weight_decay)
    return float((probe.predict(test_x)[0] == np.asarray(test_y)).mean())


# ----------------------------------------------------------------------------------------------------------
# few-shot classifiers: 1-10 labels per class
# ----------------------------------------------------------------------------------------------------------
@dataclass
class KnnClassifier:
    """Weighted kNN over the labelled examples as a classifier: probabilities are the normalised votes."""

    x: np.ndarray  # N, D labelled features (L2-normalised)
    y: np.ndarray  # N class indices
    num_classes: int
    k: int = 200
    t: float = 0.1

    def predict_proba(self, x: Features, chunk: int = 4096) -> np.ndarray:
        votes = knn_predict(self.x, self.y, x, self.num_classes, self.k, self.t, chunk)  # N, C
        proba: np.ndarray = votes / votes.sum(1, keepdims=True).clip(min=1e-30)
        return proba

    def predict(self, x: Features) -> tuple[np.ndarray, np.ndarray]:
        p = self.predict_proba(x)
        return p.argmax(1), p.max(1)


def fit_knn(x: Features, y: Labels, num_classes: int | None = None, k: int = 200, t: float = 0.1) -> KnnClassifier:
    y = np.asarray(y, dtype=np.int64)
    c = int(num_classes if num_classes is not None else y.max() + 1)
    return KnnClassifier(F.normalize(_tensor(x), dim=1).numpy(), y, c, k, t)


def _class_means(xn: torch.Tensor, y: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of each class's normalised features (C,D) and the class counts (C)."""
    counts = torch.bincount(y, minlength=c).float()
    sums = torch.zeros(c, xn.shape[1]).index_add_(0, y, xn)
    return sums / counts.clamp(min=1).unsqueeze(1), counts


def _prototype_weights(xn: torch.Tensor, y: torch.Tensor, c: int, centre: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit prototypes and bias such that x̂ @ W.T + b is the cosine of (x̂ - mu) with each prototype, times |x̂ - mu|.

    mu, the mean of the class means, is what every class shares; removing it leaves the directions that
    tell classes apart (SimpleShot's centring). Dropping the per-image |x̂ - mu| keeps the rule linear in x̂
    (the argmax is unchanged) so it is a LinearProbe; absent classes get a bias that never wins.
    """
    means, counts = _class_means(xn, y, c)
    present = counts > 0
    mu = means[present].mean(0) if centre else torch.zeros(xn.shape[1])
    w = F.normalize(means - mu, dim=1) * present.unsqueeze(1)  # C, D
    b = -(w @ mu) - 1e4 * (~present).float()  # C
    return w, b


def fit_prototypes(x: Features, y: Labels, num_classes: int | None = None, temperature: float = 0.05,
                   centre: bool = True) -> LinearProbe:
    """Nearest class mean on L2-normalised features (Snell et al. 2017), centred (SimpleShot, Wang et al. 2019).

    Logits are cosine-like scores divided by `temperature`, so softmax gives probabilities.
    """
    xn = F.normalize(_tensor(x), dim=1)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    c = int(num_classes if num_classes is not None else y.max().item() + 1)
    w, b = _prototype_weights(xn, y, c, centre)
    return LinearProbe((w / temperature).numpy().copy(), (b / temperature).numpy().copy())


def fit_proto_linear(x: Features, y: Labels, num_classes: int | None = None, anchor: float = 1e-2, temperature: float = 0.05,
                     centre: bool = True, max_iter: int = 100) -> LinearProbe:
    """Logistic regression started at the prototypes and pulled toward them.

    Minimises cross-entropy + anchor * |W - W0|^2 with W0, b0 the prototypes at `temperature`: the
    prototype classifier is the prior and the labels move it (the CLIP paper's few-shot remark, sec. 3.2.5;
    the same idea as Tip-Adapter's cache initialised from the labelled examples). A large anchor gives the
    prototypes back; zero gives a plain, unregularised logistic regression.
    """
    xn = F.normalize(_tensor(x), dim=1)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    c = int(num_classes if num_classes is not None else y.max().item() + 1)
    w0, b0 = _prototype_weights(xn, y, c, centre)
    w0, b0 = w0 / temperature, b0 / temperature
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xn @ w.T + b, y) + anchor * ((w - w0) ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(w.detach().numpy().copy(), b.detach().numpy().copy())


FEW_SHOT_METHODS: dict[str, Callable[[Features, Labels, int | None], Classifier]] = {
    "logistic": fit_linear,
    "prototype": fit_prototypes,
    "proto-logistic": fit_proto_linear,
    "knn": fit_knn,
}


def _draw(train_y: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `shots` random examples of every class (all of a class that has fewer)."""
    return np.concatenate(
        [rng.choice(np.flatnonzero(train_y == c), size=min(shots, int((train_y == c).sum())), replace=False)
         for c in np.unique(train_y)]
    )


def fewshot_weight_decay(y: Labels) -> float:
    """The few-shot probe's L2 penalty: 1e-2 / (labels per class), never below fit_linear's 1e-4.

    Measured (scripts/bench_fewshot.py, 5 held-out Imagenette classes and CIFAR-10, 20 draws): at 1-10
    labels per class no classifier tried (prototypes centred or not, prototype-initialised logistic
    regression, kNN) beats logistic regression's top-1 by more than the spread between draws, but with
    fit_linear's 1e-4 its confidences are far too high (expected calibration error 0.40 at 1 label, 0.26
    at 5). A penalty that shrinks as labels accumulate keeps the top-1 (within 0.3 points on Imagenette,
    0.4-1.1 lower on CIFAR-10, both inside the spread between draws) and makes the confidence a
    probability one can accept predictions by (ECE 0.02-0.09 at 1-10 labels); with a hundred labels per
    class it is the plain probe's again.
    """
    counts = np.bincount(np.asarray(y, dtype=np.int64))
    per_class = float(np.median(counts[counts > 0])) if counts.any() else 1.0
    return max(1e-4, 1e-2 / max(per_class, 1.0))


def fit_fewshot(x: Features, y: Labels, num_classes: int | None = None, max_iter: int = 200) -> LinearProbe:
    """The classifier of the page and of `evaluate`'s few-shot rows: logistic regression whose penalty
    follows the number of labels per class (`fewshot_weight_decay`), so its confidence stays calibrated."""
    return fit_linear(x, y, num_classes, weight_decay=fewshot_weight_decay(y), max_iter=max_iter)


FEW_SHOT_METHODS["fewshot"] = fit_fewshot


def fit_method(method: str, x: Features, y: Labels, num_classes: int | None = None,
               weight_decay: float = 1e-4) -> Classifier:
    """Fit one of FEW_SHOT_METHODS; `weight_decay` is the plain logistic probe's."""
    if method == "logistic":
        return fit_linear(x, y, num_classes, weight_decay)
    if method not in FEW_SHOT_METHODS:
        raise ValueError(f"few-shot method {method!r}: choose one of {', '.join(FEW_SHOT_METHODS)}")
    return FEW_SHOT_METHODS[method](x, y, num_classes)


def few_shot_top1(
    train_x: Features, train_y: Labels, test_x: Features, test_y: Labels, shots: int, draws: int = 5, seed: int = 0, weight_decay: float = 1e-4,
    method: str = "logistic",
) -> tuple[float, float]:
    """A classifier trained on `shots` random labelled images per class; (mean, std) top-1 over draws.

    method: "logistic" (fit_linear with `weight_decay`), "fewshot" (fit_fewshot) or another FEW_SHOT_METHODS
    key. The draws depend on the seed only, so two methods with the same seed see the same labelled images.
    """
    train_x, train_y, test_y = np.asarray(train_x), np.asarray(train_y), np.asarray(test_y)
    num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(draws):
        idx = _draw(train_y, shots, rng)
        clf = fit_method(method, train_x[idx], train_y[idx], num_classes, weight_decay)
        accs.append(float((clf.predict(test_x)[0] == test_y).mean()))
    return float(np.mean(accs)), float(np.std(accs))


def cv_folds(y: Labels, folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The (train, test) index arrays of stratified k-fold cross-validation: each class's labels, in random
    order, are dealt round the folds, so that fold f holds the f-th label of every class that has one and every
    training part keeps the classes as balanced as the labels are. (A plain k-fold split leaves the held-out
    photo's class with fewer labels than the others, and logistic regression's free bias then votes against
    it: at 2 labels per class that estimate fell 29 points below the truth, scripts/bench_folders.py.)
    folds is capped at the most labels of a class; folds whose training part holds a single class are left
    out. None when nothing can be estimated (fewer than 2 classes, or no class with 2 labels)."""
    y = np.asarray(y)
    counts = np.bincount(y) if len(y) else np.zeros(0, np.int64)
    if (counts > 0).sum() < 2 or counts.max() < 2:
        return None
    folds = min(folds, int(counts.max()))
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    for c in np.flatnonzero(counts):
        rows = rng.permutation(np.flatnonzero(y == c))
        fold[rows] = (np.arange(len(rows)) + rng.integers(folds)) % folds  # a random start: folds stay even
    out = []
    for f in range(folds):
        test, train = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        if len(test) and len(np.unique(y[train])) >= 2:
            out.append((train, test))
    return out


def cross_val_accuracy(x: Features, y: Labels, folds: int = 5, seed: int = 0, weight_decay: float = 1e-4,
                       method: str = "logistic") -> float | None:
    """k-fold accuracy estimate of a classifier (see few_shot_top1 and cv_folds): the share of labelled
    examples predicted right by a classifier fitted without them. None when it cannot be estimated."""
    x, y = np.asarray(x, np.float32), np.asarray(y)
    split = cv_folds(y, folds, seed)
    if split is None:
        return None
    correct = 0
    num_classes = int(y.max()) + 1
    for train, test in split:
        clf = fit_method(method, x[train], y[train], num_classes, weight_decay)
        correct += int((clf.predict(x[test])[0] == y[test]).sum())
    return correct / len(y)


# ----------------------------------------------------------------------------------------------------------
# the page's classifier: logistic regression, its confidence calibrated, its accuracy estimated
# ----------------------------------------------------------------------------------------------------------
ESTIMATE_FOLDS = 10  # stratified folds of the page's estimate: 10 fits, each on 9/10 of the labels (or n-1 of n)


@dataclass
class CrossValidated:
    """Stratified cross-validation of logistic regression on the labels (cv_folds): every held-out label's
    logits from a classifier fitted without it."""

    logits: np.ndarray  # N_held, C
    y: np.ndarray  # N_held true classes
    num_classes: int

    def recall(self) -> np.ndarray:
        """(C,) the share of each class's held-out labels predicted right; NaN for a class never held out (a
        class with one label has nothing left to learn from when it is held out, so it is not)."""
        hit = np.bincount(self.y, self.logits.argmax(1) == self.y, self.num_classes)
        n = np.bincount(self.y, minlength=self.num_classes)
        return np.where(n > 0, hit / np.maximum(n, 1), np.nan)

    def accuracy(self, share: np.ndarray | None = None) -> float | None:
        """The estimated accuracy on the photos still unlabelled: each class's recall weighted by `share` (C,),
        the share of those photos the classifier gives to each class (the classes' sizes as the page can know
        them), or equally (share None). None when no class could be held out."""
        r = self.recall()
        ok = ~np.isnan(r)
        if not ok.any():
            return None
        w = np.ones(self.num_classes) if share is None else np.asarray(share, np.float64)
        w = np.where(ok, w, 0.0)
        return float((r[ok] * w[ok]).sum() / w[ok].sum()) if w[ok].sum() > 0 else float(r[ok].mean())

    def temperature(self) -> float:
        """The temperature that makes the held-out probabilities most likely (Guo et al. 2017's temperature
        scaling), on a log grid from 1/2 to 200: how sure weakly penalised logistic regression is depends on how
        far apart the labelled photos lie, not on how often it is right; dividing its logits by T makes its
        confidence a probability without changing any prediction."""
        logits, y = torch.as_tensor(self.logits), torch.as_tensor(self.y)
        grid = np.exp(np.linspace(np.log(0.5), np.log(200.0), 61))
        nll = [float(F.cross_entropy(logits / t, y)) for t in grid]
        return float(grid[int(np.argmin(nll))])


def cross_validate(x: Features, y: Labels, num_classes: int | None = None, weight_decay: float = 1e-4,
                   folds: int = ESTIMATE_FOLDS, seed: int = 0) -> CrossValidated | None:
    """fit_linear cross-validated on stratified folds (cv_folds); None when nothing can be held out."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    c = int(num_classes if num_classes is not None else y.max() + 1)
    split = cv_folds(y, folds, seed)
    if not split:
        return None
    xn = F.normalize(_tensor(x), dim=1).numpy()
    logits, held = [], []
    for train, test in split:
        if np.bincount(y[train], minlength=c)[y[test]].min() == 0:  # a class with one label: not held out
            test = test[np.bincount(y[train], minlength=c)[y[test]] > 0]
        if not len(test):
            continue
        clf = fit_linear(x[train], y[train], c, weight_decay)
        logits.append(xn[test] @ clf.weight.T + clf.bias)
        held.append(y[test])
    if not logits:
        return None
    return CrossValidated(np.concatenate(logits).astype(np.float32), np.concatenate(held), c)


@dataclass
class PageProbe:
    """What the page trains: logistic regression (fit_linear, its logits divided by a calibrating temperature)
    and the cross-validation behind its estimate."""

    probe: LinearProbe
    temperature: float
    cv: CrossValidated | None


def fit_page(x: Features, y: Labels, num_classes: int | None = None, weight_decay: float = 1e-4) -> PageProbe:
    """The page's few-shot classifier: plain logistic regression (fit_linear). On photo folders shaped like real
    ones (scripts/bench_folders.py, BENCHMARKS.md) no classifier tried (neighbour averaging by cross-validation
    or by a fixed size, mixtures, label propagation) was at least as accurate on every folder and label count,
    so the plain one is kept; its logits are divided by the temperature the cross-validation finds (the
    predictions are the same; the confidence becomes a probability one can accept by)."""
    y = np.asarray(y, np.int64)
    c = int(num_classes if num_classes is not None else y.max() + 1)
    clf = fit_linear(x, y, c, weight_decay)
    cv = cross_validate(x, y, c, weight_decay)
    t = cv.temperature() if cv is not None else 1.0
    return PageProbe(LinearProbe(clf.weight / t, clf.bias / t), t, cv)


def estimate(cv: CrossValidated | None, confidence: float, z: float = 3.0) -> tuple[float, float, float] | None:
    """(accuracy, low, high): what the page reports of its classifier's accuracy on the photos still unlabelled.

    Two estimates that both read low, for different reasons: the stratified cross-validation's accuracy (`cv`:
    each classifier it fits has fewer labels than the one trained on all of them: at 2 labels per kind, one)
    and the mean calibrated confidence of the predictions on the unlabelled photos (`confidence`: its
    temperature is fitted on those weaker classifiers, so it is too soft for the full one, and photos of kinds
    nobody labelled pull it down). The higher of the two is reported: on seven folders shaped like real ones
    (scripts/bench_folders.py, BENCHMARKS.md) it came within 5 points of the truth, averaged over draws, on every
    folder from 5 labels per kind, and at 2 everywhere but the folders of uneven kinds with a 15-minute encoder
    (up to 7.5 points low), where their average read up to 13.5 points low. The range runs from the lower to
    the higher of the two, each widened by the Wilson interval of the cross-validation's count of right
    answers at z = 3: it held the truth in at least 9 draws of 10 on every folder and label count from 2
    labels per kind (z = 2.5 in 8). None without a cross-validation (one label per class)."""
    if cv is None:
        return None
    n = len(cv.y)
    a = cv.accuracy()
    if a is None or n == 0:
        return None
    centre = (a + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(a * (1 - a) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = min(centre - half, confidence), max(centre + half, confidence)
    return max(a, confidence), float(max(0.0, low)), float(min(1.0, high))
