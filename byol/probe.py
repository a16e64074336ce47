"""kNN and linear-probe maths on frozen embeddings, shared by evaluation and by the page's labelling.

The field's protocol (Wu et al. 2018, used by lightly, solo-learn and DINO): features L2-normalised,
weighted kNN with k=200 and temperature 0.1, votes weighted by exp(cos / t); and a linear probe
(multinomial logistic regression) on frozen features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def _tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32)) if not torch.is_tensor(x) else x.float()


@torch.no_grad()
def knn_predict(
    train_x, train_y, test_x, num_classes: int, k: int = 200, t: float = 0.1, chunk: int = 1024
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


def knn_top1(train_x, train_y, test_x, test_y, k: int = 200, t: float = 0.1) -> float:
    num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    scores = knn_predict(train_x, train_y, test_x, num_classes, k, t)
    return float((scores.argmax(1) == np.asarray(test_y)).mean())


@dataclass
class LinearProbe:
    """Multinomial logistic regression on L2-normalised features: softmax(W x + b)."""

    weight: np.ndarray  # C, D
    bias: np.ndarray  # C

    @torch.no_grad()
    def predict_proba(self, x, chunk: int = 65536) -> np.ndarray:
        """N,D features -> N,C probabilities."""
        x = _tensor(x)
        w, b = torch.as_tensor(self.weight), torch.as_tensor(self.bias)
        out = [torch.softmax(F.normalize(x[i : i + chunk], dim=1) @ w.T + b, dim=1) for i in range(0, len(x), chunk)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.bias)), np.float32)

    def predict(self, x) -> tuple[np.ndarray, np.ndarray]:
        """N,D -> (class index, confidence = max probability)."""
        p = self.predict_proba(x)
        return p.argmax(1), p.max(1)


def fit_linear(x, y, num_classes: int | None = None, weight_decay: float = 1e-4, max_iter: int = 200) -> LinearProbe:
    """Fit a logistic regression with full-batch L-BFGS on L2-normalised features.

    The features are scaled by 10 internally-equivalent via an unpenalised temperature: a cosine in [-1, 1]
    needs large weights to give confident predictions, and L-BFGS finds them in a few dozen iterations.
    """
    x = F.normalize(_tensor(x), dim=1)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    c = int(num_classes if num_classes is not None else y.max().item() + 1)
    w = torch.zeros(c, x.shape[1], requires_grad=True)
    b = torch.zeros(c, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(w.detach().numpy().copy(), b.detach().numpy().copy())


def linear_top1(train_x, train_y, test_x, test_y, weight_decay: float = 1e-4) -> float:
    num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    probe = fit_linear(train_x, train_y, num_classes, weight_decay)
    return float((probe.predict(test_x)[0] == np.asarray(test_y)).mean())


def few_shot_top1(
    train_x, train_y, test_x, test_y, shots: int, draws: int = 5, seed: int = 0, weight_decay: float = 1e-4
) -> tuple[float, float]:
    """Linear probe trained on `shots` random labelled images per class; (mean, std) top-1 over draws."""
    train_y = np.asarray(train_y)
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(draws):
        idx = np.concatenate(
            [rng.choice(np.flatnonzero(train_y == c), size=min(shots, int((train_y == c).sum())), replace=False)
             for c in np.unique(train_y)]
        )
        accs.append(linear_top1(np.asarray(train_x)[idx], train_y[idx], test_x, test_y, weight_decay))
    return float(np.mean(accs)), float(np.std(accs))


def cross_val_accuracy(x, y, folds: int = 5, seed: int = 0, weight_decay: float = 1e-4) -> float | None:
    """k-fold (leave-one-out when there are few labels) accuracy estimate of the linear probe.

    None when it cannot be estimated (fewer than 2 classes, or a single example per class).
    """
    x, y = np.asarray(x, np.float32), np.asarray(y)
    n = len(y)
    classes = np.unique(y)
    if len(classes) < 2 or n < 3:
        return None
    folds = min(folds, n)
    order = np.random.default_rng(seed).permutation(n)
    correct = 0
    num_classes = int(y.max()) + 1
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        if len(np.unique(y[train])) < 2:
            continue
        probe = fit_linear(x[train], y[train], num_classes, weight_decay)
        correct += int((probe.predict(x[test])[0] == y[test]).sum())
    return correct / n
