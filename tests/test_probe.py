"""kNN and linear-probe maths on embeddings (byol/probe.py)."""

from __future__ import annotations

import numpy as np
import pytest

from byol import probe


def clusters(n_per_class: int, num_classes: int = 4, dim: int = 16, spread: float = 0.1, seed: int = 0):
    """Well-separated Gaussian clusters around random unit centres: (x, y)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(num_classes), n_per_class)
    x = centres[y] + spread * rng.normal(size=(len(y), dim))
    return x.astype(np.float32), y


def test_knn_separable_clusters_near_perfect():
    x, y = clusters(70)
    test = np.arange(len(y)) % 7 == 0
    acc = probe.knn_top1(x[~test], y[~test], x[test], y[test], k=20, t=0.1)
    assert acc >= 0.98


def test_knn_random_labels_near_chance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 32)).astype(np.float32)
    y = rng.integers(0, 4, size=2000)
    acc = probe.knn_top1(x[:1500], y[:1500], x[1500:], y[1500:], k=50, t=0.1)
    assert 0.15 < acc < 0.35  # chance is 0.25


def test_knn_exact_match_wins_for_k1():
    x = np.eye(3, dtype=np.float32)
    y = np.array([0, 1, 2])
    query = np.array([[0.1, 1.0, 0.1]], dtype=np.float32)  # nearest to row 1
    scores = probe.knn_predict(x, y, query, num_classes=3, k=1, t=0.1)
    assert scores.argmax(1).tolist() == [1]
    assert scores[0, 0] == 0 and scores[0, 2] == 0  # only the neighbour votes


def test_knn_weighting_favours_close_neighbours():
    # two far neighbours of class 0 against one near-exact neighbour of class 1: the temperature makes
    # the close one outweigh the others (exp(cos / t)); a plain majority vote would say class 0
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]], dtype=np.float32)
    y = np.array([1, 0, 0])
    query = np.array([[1.0, 0.02]], dtype=np.float32)
    scores = probe.knn_predict(x, y, query, num_classes=2, k=3, t=0.1)
    assert scores.argmax(1).tolist() == [1]


def test_fit_linear_learns_separable_embeddings():
    x, y = clusters(40, num_classes=5)
    clf = probe.fit_linear(x[::2], y[::2], num_classes=5)
    pred, conf = clf.predict(x[1::2])
    assert (pred == y[1::2]).mean() >= 0.95
    assert conf.shape == (len(pred),) and ((conf > 0) & (conf <= 1)).all()
    assert np.allclose(clf.predict_proba(x[:3]).sum(1), 1, atol=1e-5)


def test_fit_linear_one_label_per_class():
    x, y = clusters(30, num_classes=3, spread=0.05)
    one = np.array([np.flatnonzero(y == c)[0] for c in range(3)])
    clf = probe.fit_linear(x[one], y[one], num_classes=3)
    assert (clf.predict(x)[0] == y).mean() >= 0.9


def test_few_shot_returns_mean_and_std():
    x, y = clusters(30, num_classes=3)
    mean, std = probe.few_shot_top1(x[::2], y[::2], x[1::2], y[1::2], shots=2, draws=3)
    assert 0.8 <= mean <= 1.0
    assert 0.0 <= std <= 0.5


def test_cross_val_accuracy():
    x, y = clusters(10, num_classes=2)
    assert probe.cross_val_accuracy(x, y) == pytest.approx(1.0, abs=0.1)
    assert probe.cross_val_accuracy(x, np.zeros(len(y), dtype=int)) is None  # one class: nothing to estimate
