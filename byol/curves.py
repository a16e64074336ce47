"""A run's log.jsonl read back, and curves.png drawn from it (byol.train writes both; see its docstring)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from byol.fileio import atomic_write


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of log.jsonl in order; [] for a missing file; a torn last line (a crash) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def plot_curves(log_path: str | Path, png_path: str | Path) -> None:
    """curves.png from log.jsonl: loss, lr, tau, collapse std and (if any) kNN top-1 against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_log(log_path)
    tr = [r for r in recs if r.get("kind") == "train"]
    ev = [r for r in recs if r.get("kind") == "eval"]
    panels = [("loss", tr), ("lr", tr), ("tau", tr), ("collapse_std", tr)] + ([("knn_top1", ev)] if ev else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0))
    for ax, (key, rs) in zip(axes, panels):
        ax.plot([r["step"] for r in rs], [r[key] for r in rs], marker="o" if key == "knn_top1" else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write(png_path, lambda f: f.write(buf.getvalue()))
