"""index/ivf.py: the exact/IVF switch with its hysteresis, nlist, and the recall measure."""

from __future__ import annotations

import numpy as np

from index.ivf import ivf_nlist, new_exact, recall_at_k, reshape, without_self


def unit(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_with(n: int, d: int = 16) -> tuple[object, np.ndarray, np.ndarray]:
    x, ids = unit(n, d), np.arange(100, 100 + n, dtype=np.int64) * 3  # ids that are not row numbers
    index = new_exact(d)
    index.add_with_ids(x, ids)
    return index, x, ids


def test_exact_stays_exact_below_the_limit():
    index, _, ids = exact_with(399)
    assert reshape(index, ids, 16, "exact", 0, exact_limit=400) is None


def test_exact_becomes_ivf_at_the_limit_and_keeps_every_vector():
    index, x, ids = exact_with(400)
    ivf, meta = reshape(index, ids, 16, "exact", 0, exact_limit=400, target_recall=0.9)
    assert meta["index_type"] == "ivf" and meta["trained_on"] == "400" and int(meta["nprobe"]) >= 1
    assert ivf.ntotal == 400 and ivf.nlist == ivf_nlist(400)
    np.testing.assert_array_equal(ivf.reconstruct_batch(ids), x)
    assert float(meta["ivf_recall_at_10"]) >= 0.9


def test_ivf_hysteresis_retrain_and_back_to_exact():
    index, x, ids = exact_with(400)
    ivf, _ = reshape(index, ids, 16, "exact", 0, exact_limit=400)
    assert reshape(ivf, ids, 16, "ivf", trained_on=99, exact_limit=400) is not None  # grown over 4x: retrained
    assert reshape(ivf, ids, 16, "ivf", trained_on=100, exact_limit=400) is None  # exactly 4x: kept
    assert reshape(ivf, ids, 16, "ivf", trained_on=400, exact_limit=801) is None  # above half the limit
    back, meta = reshape(ivf, ids, 16, "ivf", trained_on=400, exact_limit=802)  # below half: exact again
    assert meta == {"index_type": "exact", "nprobe": "0", "trained_on": "0"}
    np.testing.assert_array_equal(back.reconstruct_batch(ids), x)
    scores, found = back.search(x[:5], 1)
    np.testing.assert_array_equal(found[:, 0], ids[:5])


def test_ivf_nlist():
    assert ivf_nlist(0) == 1 and ivf_nlist(100) == 2  # at least 39 training points per list
    assert ivf_nlist(10_000) == 256 and ivf_nlist(1_000_000) == 4096  # ~4 sqrt(n), a power of two


def test_recall_at_k_and_without_self():
    assert recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]]), k=3) == 2 / 6
    assert recall_at_k(np.array([[1, -1]]), np.array([[1, -1]]), k=2) == 0.5  # a missing slot is no hit
    np.testing.assert_array_equal(without_self(np.array([[7, 1, 2], [3, 8, 4]]), np.array([7, 8]), 2),
                                  [[1, 2], [3, 4]])
