"""index/vectorfile.py: a float16 .npy written in chunks and read by rows, whatever their order and spacing."""

from __future__ import annotations

import numpy as np
import pytest

from index import vectorfile
from index.vectorfile import VectorFile


def test_rows_in_any_order_read_as_numpy_would(tmp_path, monkeypatch):
    monkeypatch.setattr(vectorfile, "BLOCK", 1000)  # runs longer than a block are read in several spans
    x = np.random.default_rng(0).standard_normal((5000, 8)).astype(np.float32)
    path = tmp_path / "vectors.npy"
    vectorfile.write(path, (x[a:a + 700] for a in range(0, len(x), 700)), len(x), 8)
    ref = np.load(path)
    assert np.array_equal(ref, x.astype(np.float16))  # a plain .npy: numpy reads it
    v = VectorFile(path)
    assert v.shape == (5000, 8) and len(v) == 5000
    rng = np.random.default_rng(1)
    for rows in (np.zeros(0, np.int64), np.array([4999]), rng.integers(0, 5000, 40),  # far apart: one read each
                 rng.integers(0, 5000, 20_000), np.arange(0, 5000, 3)[::-1], np.arange(5000)):  # near: spans
        assert np.array_equal(v.rows(rows), ref[rows])
    assert np.array_equal(v.span(4990, 6000), ref[4990:])
    with pytest.raises(IndexError):
        v.rows(np.array([5000]))


def test_a_short_file_is_an_error(tmp_path):
    path = tmp_path / "vectors.npy"
    with pytest.raises(ValueError, match="3 rows written, 4 announced"):
        vectorfile.write(path, [np.ones((3, 4), np.float32)], 4, 4)
    with pytest.raises(OSError, match="truncated"):
        VectorFile(path).span(0, 4)
