"""INDEX_DIR/manifest.json: a readable mirror of the index's `meta` table, for people and for other stages.

What made the index (encoder sha256 and path, where the encoder came from, preprocessing, dimension), what it
holds (count, index type, generation and its vectors file) and when. The database is the truth: a save
rewrites the manifest after its commit, so a manifest one generation behind (a save killed in between) is
rewritten by the next writer, and one ahead of the database means the files come from different saves
(index/store.py refuses it on open).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from byol.fileio import atomic_write_bytes

FILE = "manifest.json"


def describe(meta: dict[str, str], count: int, ondisk: dict[str, Any] | None = None,
             memory_limit: int | None = None) -> dict[str, Any]:
    """The manifest of an index whose `meta` table reads `meta` and which holds `count` vectors; `ondisk`
    (OnDiskIndex.describe()) and `memory_limit` for an index on disk."""
    m = meta
    out = {
        "format": m["format"], "version": m["version"], "generation": int(m["generation"]),
        "vectors_file": m["vectors_file"], "model_sha256": m["model_sha256"], "model_path": m["model_path"],
        "preprocess": json.loads(m["preprocess"]), "dim": int(m["dim"]), "index_type": m["index_type"],
        "count": count, "exact_limit": int(m["exact_limit"]),
        "created_at": float(m["created_at"]), "updated_at": float(m["updated_at"]),
    }
    if m.get("encoder"):
        out["encoder"] = json.loads(m["encoder"])
    if m["index_type"] == "ivf":
        out.update(nprobe=int(m["nprobe"]), trained_on=int(m["trained_on"]),
                   recall_at_10=float(m.get("ivf_recall_at_10", "nan")))
    if ondisk is not None:
        out.update(memory_limit=memory_limit, ondisk=ondisk)
    return out


def write(index_dir: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json atomically."""
    atomic_write_bytes(index_dir / FILE, (json.dumps(manifest, indent=2) + "\n").encode())


def generation(index_dir: Path) -> int:
    """The generation manifest.json names; -1 when it is missing or unreadable."""
    try:
        return int(json.loads((index_dir / FILE).read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1
