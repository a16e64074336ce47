"""byol.curves: reading log.jsonl back and plotting curves.png."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from byol.curves import plot_curves, read_log


def write_log(path, recs, torn: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + torn)


def test_read_log_keeps_order_and_skips_a_torn_line(tmp_path):
    recs = [{"kind": "plan", "step": 0}, {"kind": "train", "step": 1, "loss": 4.0}]
    write_log(tmp_path / "log.jsonl", recs, torn='{"kind": "train", "ste')
    assert read_log(tmp_path / "log.jsonl") == recs
    assert read_log(tmp_path / "missing.jsonl") == []


def test_plot_curves_draws_one_panel_per_series(tmp_path):
    train = [{"kind": "train", "step": s, "loss": 4.0 / s, "lr": 0.1, "tau": 0.99, "collapse_std": 0.06}
             for s in range(1, 5)]
    write_log(tmp_path / "a.jsonl", train)
    write_log(tmp_path / "b.jsonl", train + [{"kind": "eval", "step": 4, "knn_top1": 0.5}])
    plot_curves(tmp_path / "a.jsonl", tmp_path / "a.png")
    plot_curves(tmp_path / "b.jsonl", tmp_path / "b.png")
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert a.format == b.format == "PNG"
    assert a.size[0] / b.size[0] == pytest.approx(4 / 5, abs=0.01)  # four panels, then five with the kNN curve
