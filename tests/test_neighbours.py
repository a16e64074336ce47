"""byol/neighbours.py (the few-shot classifier over a neighbour graph) and index/neighbours.py (the graph of an index)."""

from __future__ import annotations

import numpy as np
import pytest

from byol import probe
from byol.neighbours import (
    Graph,
    NeighbourClassifier,
    average_features,
    average_predictions,
    cross_val_accuracy,
    exact_graph,
    few_shot_top1,
)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def noisy_classes(n_per_class: int = 60, classes: int = 3, dim: int = 64, noise: float = 1.6, seed: int = 0):
    """Unit vectors: a class direction plus a large random part of each photo's own (what one photo has alone)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] / np.sqrt(dim) * 4 + noise * rng.normal(size=(len(y), dim)) / np.sqrt(dim) * 4
    return unit(x), y


# ---------------------------------------------------------------------------------------------- the maths
def test_average_features_weights_by_cosine_cubed_and_skips_missing():
    v = unit(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32))
    scores = np.array([[1.0, 0.5, -0.3], [1.0, -np.inf, 0.2], [1.0, 0.9, 0.9]], np.float32)
    rows = np.array([[0, 1, 2], [1, -1, 2], [2, -1, -1]], np.int32)
    out = average_features(Graph(scores, rows, v), k=3)
    np.testing.assert_allclose(out[0], unit(np.array([[1, 0.125, 0]]))[0], atol=1e-6)  # the negative one weighs 0
    np.testing.assert_allclose(out[1], unit(np.array([[0, 1, 0.008]]))[0], atol=1e-6)  # the missing slot too
    np.testing.assert_allclose(out[2], [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(average_features(Graph(scores, rows, v), k=1), v, atol=1e-6)  # itself alone


def test_average_predictions_is_a_weighted_mean_of_probabilities():
    v = unit(np.eye(3, dtype=np.float32))
    g = Graph(np.array([[1.0, 0.5], [1.0, 0.0], [1.0, -np.inf]], np.float32),
              np.array([[0, 2], [1, 0], [2, -1]], np.int32), v)
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]], np.float32)
    out = average_predictions(proba, g, np.array([0, 1, 2]), k=2)
    w = 0.5 ** 3
    np.testing.assert_allclose(out[0], (proba[0] + w * proba[2]) / (1 + w), atol=1e-6)
    np.testing.assert_allclose(out[1:], proba[1:], atol=1e-6)  # zero-weight and missing neighbours add nothing
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-6)


def test_exact_graph_matches_a_brute_force_search():
    x, _ = noisy_classes(20, 2, 16)
    g = exact_graph(x, k=5, chunk=7)  # chunks that do not divide the collection
    sims = x @ x.T
    want = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(g.rows[:, 0], np.arange(len(x)))  # every photo finds itself first
    # cosines of unit float32 vectors in 16 dimensions: two summation orders differ by at most ~16 x 6e-8
    np.testing.assert_allclose(g.scores, np.take_along_axis(sims, want, 1), atol=1e-5)
    assert g.rows.dtype == np.int32 and g.scores.shape == (40, 5)
    assert exact_graph(x[:3], k=10).rows.shape == (3, 3)  # k never above the collection


def test_graph_shapes_are_checked():
    with pytest.raises(ValueError, match="shapes"):
        Graph(np.zeros((3, 2), np.float32), np.zeros((3, 3), np.int32), np.zeros((3, 4), np.float32))


def test_with_one_neighbour_it_is_the_plain_fewshot_classifier():
    """k = 1 averages nothing: fit, draws and the cross-validated estimate are byol.probe's; the logits are only
    sharpened. Two L-BFGS fits agree only as far as the optimiser's tolerance, and where it stops moves with the
    CPU's arithmetic (AVX2, AVX-512, AMX; MKL or OpenBLAS) and the last bit of an input: the weights of the two
    differed by 1.8e-4 on an Intel Xeon with AMX. So the test compares what the classifier says: the class of
    every photo, the probabilities within 1e-3 (ten times that difference, still a thousandth of a
    confidence), and accuracies within one photo (a photo on the boundary may fall either way)."""
    x, y = noisy_classes(30, 3, 32)
    nc = NeighbourClassifier(exact_graph(x), k_features=1, k_predictions=1, sharpen=1.0)
    rows = np.array([0, 1, 30, 31, 60, 61])
    ours, plain = nc.fit(rows, y[rows], 3), probe.fit_fewshot(x[rows], y[rows], 3)
    np.testing.assert_array_equal(ours.predict(x)[0], plain.predict(x)[0])
    np.testing.assert_allclose(ours.predict_proba(x), plain.predict_proba(x), atol=1e-3)
    pool, test = np.arange(0, 90, 2), np.arange(1, 90, 2)
    got = few_shot_top1(nc, pool, y[pool], test, y[test], shots=2, draws=3, seed=4)
    want = probe.few_shot_top1(x[pool], y[pool], x[test], y[test], 2, draws=3, seed=4, method="fewshot")
    assert got[0] == pytest.approx(want[0], abs=1 / len(test) + 1e-9)
    assert cross_val_accuracy(nc, rows, y[rows]) == pytest.approx(
        probe.cross_val_accuracy(x[rows], y[rows], method="fewshot"), abs=1 / len(rows) + 1e-9)
    sharp = NeighbourClassifier(exact_graph(x), k_features=1, k_predictions=1)  # SHARPEN: logits doubled
    np.testing.assert_allclose(sharp.fit(rows, y[rows], 3).weight, 2 * nc.fit(rows, y[rows], 3).weight, rtol=1e-3,
                               atol=1e-3 * np.abs(ours.weight).max())  # one fit on one machine, scaled: same to 1e-3


def test_averaging_over_neighbours_beats_the_plain_classifier_with_one_label():
    """Each photo's own noise dominates its embedding; its neighbours share its class: one label per class
    goes further on the averaged features (the module's claim, on constructed data)."""
    x, y = noisy_classes(80, 3, 64, noise=2.0, seed=1)
    pool, test = np.arange(0, len(y), 2), np.arange(1, len(y), 2)
    nc = NeighbourClassifier(exact_graph(x), k_features=20, k_predictions=10)
    plain = NeighbourClassifier(exact_graph(x), k_features=1, k_predictions=1)
    averaged, _ = few_shot_top1(nc, pool, y[pool], test, y[test], shots=1, draws=10)
    alone, _ = few_shot_top1(plain, pool, y[pool], test, y[test], shots=1, draws=10)
    assert averaged >= alone + 0.10, (averaged, alone)


def test_predictions_are_probabilities_for_every_row():
    x, y = noisy_classes(10, 3, 16)
    nc = NeighbourClassifier(exact_graph(x))  # default k above the collection's 30 photos
    clf = nc.fit(np.array([0, 10, 20]), np.array([0, 1, 2]), 3)
    p = nc.predict_proba(clf)
    assert p.shape == (30, 3) and np.all(p >= 0) and np.allclose(p.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(nc.predict_proba(clf, np.array([5, 7])), p[[5, 7]], atol=1e-6)
    assert cross_val_accuracy(nc, np.array([0, 1]), np.array([0, 0])) is None  # one class: nothing to estimate


# ---------------------------------------------------------------------------------------------- an index's graph
def test_store_graph_rows_point_at_the_right_photos(setup):
    from index.neighbours import store_graph

    store, _, by_class, _ = setup
    ids, g = store_graph(store, k=4)
    np.testing.assert_array_equal(ids, store.all_ids())
    np.testing.assert_allclose(g.vectors, store.get_vectors(ids), atol=1e-6)
    for i in (0, 7, len(ids) - 1):
        scores, nbr = store.search(store.get_vectors(ids[i : i + 1]), 4)
        np.testing.assert_array_equal(ids[g.rows[i]], nbr[0])  # row numbers name the ids the search found
        np.testing.assert_allclose(g.scores[i], scores[0], atol=1e-6)
    big_ids, big = store_graph(store, k=store.count + 5)  # more neighbours than photos
    assert big.rows.shape == (store.count, store.count) and (big.rows >= 0).all()


def test_store_graph_of_an_empty_index(tmp_path):
    from byol.preprocess import Preprocess
    from index.neighbours import store_graph
    from index.store import Store

    with Store.create(tmp_path / "idx", 8, "0" * 64, tmp_path / "m.onnx", Preprocess().to_dict()) as store:
        ids, g = store_graph(store)
        assert len(ids) == 0 and len(g) == 0 and g.vectors.shape == (0, 8)


def test_neighbourhood_follows_the_collection_size():
    from byol.neighbours import K_FEATURES, K_PREDICTIONS, neighbourhood

    assert neighbourhood(10) == (5, 2) and neighbourhood(400) == (10, 3)
    assert neighbourhood(100_000) == (K_FEATURES, K_PREDICTIONS) == (100, 30)
    sizes = [neighbourhood(n) for n in range(0, 10_000, 97)]
    assert sizes == sorted(sizes)  # never fewer neighbours for more photos
    x, _ = noisy_classes(10, 3, 16)
    assert (NeighbourClassifier(exact_graph(x)).k_features, NeighbourClassifier(exact_graph(x)).k_predictions) == (5, 2)


def nuisance_groups(n: int = 240, dim: int = 32, seed: int = 3):
    """Unit vectors whose nearest neighbours share a nuisance (a colour, say) across 2 classes: averaging
    over them mixes the classes, while the class direction is there for a classifier that is shown it."""
    rng = np.random.default_rng(seed)
    classes, groups = rng.integers(0, 2, n), rng.integers(0, 6, n)
    cdir, gdir = rng.normal(size=(2, dim)), rng.normal(size=(6, dim)) * 5
    x = cdir[classes] + gdir[groups] + 0.3 * rng.normal(size=(n, dim))
    return unit(x), classes


def test_choose_keeps_the_neighbours_where_they_help_and_the_plain_classifier_where_they_mislead():
    from byol.neighbours import choose

    x, y = noisy_classes(80, 3, 64, noise=2.0, seed=1)
    nc = NeighbourClassifier(exact_graph(x), k_features=20, k_predictions=6)
    rows = np.concatenate([np.flatnonzero(y == c)[:4] for c in range(3)])
    chosen = choose(nc, rows, y[rows], 3)
    assert chosen.averaged and chosen.accuracy == pytest.approx(cross_val_accuracy(nc, rows, y[rows]))

    x, y = nuisance_groups()
    nc = NeighbourClassifier(exact_graph(x), k_features=40, k_predictions=13)
    rows = np.concatenate([np.flatnonzero(y == c)[:10] for c in range(2)])
    assert cross_val_accuracy(nc, rows, y[rows]) < probe.cross_val_accuracy(x[rows], y[rows], method="fewshot")
    chosen = choose(nc, rows, y[rows], 2)
    assert not chosen.averaged
    plain = probe.fit_fewshot(x[rows], y[rows], 2)  # its logits doubled, as the neighbour classifier's
    np.testing.assert_allclose(chosen.predict_proba(nc), probe.LinearProbe(2 * plain.weight, 2 * plain.bias).predict_proba(x),
                               atol=1e-3)  # two fits of the same labels: as close as the optimiser's tolerance
    one = choose(nc, rows[[0, 10]], y[rows[[0, 10]]], 2)  # one label per class: nothing to compare
    assert one.averaged and one.accuracy is None
