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


def one_per_class(y: np.ndarray, shots: int = 1, seed: int = 0) -> np.ndarray:
    return probe._draw(y, shots, np.random.default_rng(seed))


def test_prototypes_classify_separable_clusters_from_one_shot():
    x, y = clusters(30, num_classes=4, spread=0.05)
    for centre in (True, False):
        clf = probe.fit_prototypes(x[one_per_class(y)], y[one_per_class(y)], 4, centre=centre)
        assert (clf.predict(x)[0] == y).all()


def test_prototypes_are_class_means_and_ignore_absent_classes():
    x = np.array([[1, 0, 0], [0.8, 0.2, 0], [0, 1, 0]], np.float32)
    y = np.array([0, 0, 2])
    clf = probe.fit_prototypes(x, y, num_classes=3, centre=False, temperature=1.0)
    mean0 = (x[:2] / np.linalg.norm(x[:2], axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(clf.weight[0], mean0 / np.linalg.norm(mean0), atol=1e-6)
    assert (clf.predict(np.eye(3, dtype=np.float32))[0] != 1).all()  # no example of class 1: never predicted


def test_prototype_logistic_anchor_interpolates():
    x, y = clusters(20, num_classes=3, spread=0.3)
    idx = one_per_class(y, 3)
    proto = probe.fit_prototypes(x[idx], y[idx], 3)
    held = probe.fit_proto_linear(x[idx], y[idx], 3, anchor=1e3)  # a huge anchor keeps the prototypes
    np.testing.assert_allclose(held.weight, proto.weight, atol=0.05)
    free = probe.fit_proto_linear(x[idx], y[idx], 3, anchor=1e-4)
    assert (free.predict(x[idx])[0] == y[idx]).all()  # a loose one fits its training labels


def test_knn_classifier_probabilities():
    x, y = clusters(10, num_classes=3)
    p = probe.fit_knn(x[::2], y[::2], 3, k=5).predict_proba(x[1::2])
    assert np.allclose(p.sum(1), 1, atol=1e-5) and (p >= 0).all()
    assert (p.argmax(1) == y[1::2]).mean() >= 0.9


@pytest.mark.parametrize("method", sorted(probe.FEW_SHOT_METHODS))
def test_every_method_gives_probabilities(method):
    x, y = clusters(10, num_classes=3, spread=0.3)
    clf = probe.fit_method(method, x[::2], y[::2], 3)
    p = clf.predict_proba(x[1::2])
    assert p.shape == (len(x[1::2]), 3)
    assert np.allclose(p.sum(1), 1, atol=1e-5) and ((p >= 0) & (p <= 1)).all()
    pred, conf = clf.predict(x[1::2])
    assert ((conf >= 1 / 3 - 1e-6) & (conf <= 1)).all() and (pred == p.argmax(1)).all()


def test_unknown_method_is_refused():
    x, y = clusters(3, num_classes=2)
    with pytest.raises(ValueError, match="choose one of"):
        probe.fit_method("magic", x, y)


def test_fewshot_penalty_follows_labels_per_class():
    assert probe.fewshot_weight_decay(np.arange(5)) == pytest.approx(1e-2)
    assert probe.fewshot_weight_decay(np.repeat(np.arange(5), 10)) == pytest.approx(1e-3)
    assert probe.fewshot_weight_decay(np.repeat(np.arange(2), 1000)) == pytest.approx(1e-4)  # the plain probe's


def test_fewshot_is_less_overconfident_than_plain_logistic_at_one_shot():
    # overlapping clusters: one label per class says little, and the confidence must say so too
    x, y = clusters(100, num_classes=4, spread=0.6, seed=1)
    idx = one_per_class(y)
    test = np.setdiff1d(np.arange(len(y)), idx)
    plain = probe.fit_linear(x[idx], y[idx], 4)
    few = probe.fit_fewshot(x[idx], y[idx], 4)
    acc = (few.predict(x[test])[0] == y[test]).mean()
    assert acc == pytest.approx((plain.predict(x[test])[0] == y[test]).mean(), abs=0.05)  # same top-1
    conf_plain, conf_few = plain.predict(x[test])[1].mean(), few.predict(x[test])[1].mean()
    assert conf_few < conf_plain
    assert abs(conf_few - acc) < abs(conf_plain - acc)  # its mean confidence is nearer its accuracy


def test_few_shot_top1_methods_share_draws():
    x, y = clusters(20, num_classes=3, spread=0.2)
    a = probe.few_shot_top1(x[::2], y[::2], x[1::2], y[1::2], shots=2, draws=3, method="logistic")
    b = probe.few_shot_top1(x[::2], y[::2], x[1::2], y[1::2], shots=2, draws=3, method="logistic")
    assert a == b
    mean, std = probe.few_shot_top1(x[::2], y[::2], x[1::2], y[1::2], shots=2, draws=3, method="fewshot")
    assert 0.8 <= mean <= 1.0 and std >= 0


def test_cross_val_accuracy_of_the_fewshot_classifier():
    x, y = clusters(10, num_classes=2)
    assert probe.cross_val_accuracy(x, y, method="fewshot") == pytest.approx(1.0, abs=0.1)


# ---------------------------------------------------------------------------------------------- the page's probe
def test_cv_folds_are_stratified_so_every_training_part_keeps_the_balance():
    """Each fold holds at most one more label of a class than another fold does, so no training part leaves
    a class short (the free bias of logistic regression then votes against it)."""
    y = np.repeat(np.arange(4), [2, 5, 5, 12])
    split = probe.cv_folds(y, folds=5)
    assert split is not None and len(split) == 5
    held = np.concatenate([test for _, test in split])
    assert sorted(held.tolist()) == list(range(len(y)))  # every label held out once
    for c, n in enumerate([2, 5, 5, 12]):
        per_fold = [int((y[test] == c).sum()) for _, test in split]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n
    assert len(probe.cv_folds(np.repeat(np.arange(3), 2), folds=10)) == 2  # never more folds than labels of a class
    assert probe.cv_folds(np.arange(4)) is None  # one label of each class: nothing to hold out


def test_page_probe_is_logistic_regression_with_calibrated_confidence():
    """fit_page predicts what fit_linear predicts; its logits are divided by the temperature that fits the
    held-out labels, which brings the mean confidence nearer the share of photos predicted right."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 200)
    x = rng.normal(size=(3, 32))[y] * 0.1 + rng.normal(size=(len(y), 32)) / np.sqrt(32)
    rows = np.concatenate([np.flatnonzero(y == c)[:8] for c in range(3)])
    page = probe.fit_page(x[rows], y[rows], 3)
    plain = probe.fit_linear(x[rows], y[rows], 3, 1e-4)
    assert (page.probe.predict(x)[0] == plain.predict(x)[0]).all()
    truth = float((plain.predict(x)[0] == y).mean())
    assert page.temperature != 1 and page.cv is not None and len(page.cv.y) == len(rows)
    # calibrated: the mean confidence is nearer the truth (88.5% here) than the plain fit's (85.5% against 88.4%)
    assert abs(page.probe.predict(x)[1].mean() - truth) < abs(plain.predict(x)[1].mean() - truth)


def test_estimate_reports_the_higher_of_cross_validation_and_confidence_and_ranges_around_both():
    cv = probe.CrossValidated(np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 0, 1, 2, 1, 2, 2]] * 5,
                              np.array([0, 1, 2, 1, 0, 1, 2, 0, 2, 2]), 3)
    assert cv.accuracy() == pytest.approx(np.mean([2 / 3, 2 / 3, 1.0]))  # classes weigh alike
    acc, low, high = probe.estimate(cv, 0.9)
    assert acc == pytest.approx(0.9)  # both read low: the higher is the nearer
    assert probe.estimate(cv, 0.2)[0] == pytest.approx(cv.accuracy())
    assert low < cv.accuracy() < high and high >= 0.9 and 0 <= low and high <= 1
    assert probe.estimate(None, 0.9) is None
    one = probe.CrossValidated(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), 3)
    assert one.accuracy() is None and probe.estimate(one, 0.5) is None
