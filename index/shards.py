"""Shards of embedded photos on disk: what the Ray engine (index/ray_engine.py) has finished, before the store
takes it in.

A shard is two files in INDEX_DIR/shards/: `<name>.npz` (the vectors, and the bytes of what `also` made per
photo: thumbnails, grey images) and `<name>.json`, its manifest, written last and so its commit point: the
format, the encoder (sha256 and preprocessing), the npz's sha256, and per photo its path, size and mtime_ns,
then either its row in the vectors, width, height and `also`'s result, or the reason it could not be read.
A shard without its manifest, with an npz that does not match it, or made with another encoder is of no
use and is deleted. Nothing is pickled: `also`'s results are stored as JSON and arrays, and a NamedTuple of
this package is named and rebuilt only from byol/ or index/.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from byol.fileio import atomic_write, atomic_write_bytes
from index.embed import EmbeddedBatch

SHARD_FORMAT = "byol-search/shard/1"
SHARD_DIR = "shards"  # under INDEX_DIR


class ShardFolder:
    """INDEX_DIR/shards/ for one encoder (`identity`: model_sha256 and preprocess, checked on every read)."""

    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        self.folder, self.identity = folder, identity

    def names(self) -> list[str]:
        """The shards with a manifest, by name."""
        return sorted(p.stem for p in self.folder.glob("*.json"))

    def write(self, name: str, photos: list[dict[str, Any]], vectors: np.ndarray, rest: dict[str, Any],
              position: dict[str, int]) -> EmbeddedBatch:
        """Write one finished shard: `photos` (path, size, mtime_ns each, in the shard's order), the vectors of
        its readable ones and `rest` (index/ray_engine.py's decode_shard: good, sizes, extras, bad); returns
        its batch, with the positions `position` gives each path in the list being embedded."""
        blobs: list[bytes] = []
        extras = [_encode_extra(x, blobs) for x in rest["extras"]]
        buf = io.BytesIO()
        np.savez(buf, vectors=np.ascontiguousarray(vectors, np.float32),
                 blobs=np.frombuffer(b"".join(blobs), np.uint8), ends=np.cumsum([len(b) for b in blobs], dtype=np.int64))
        npz = buf.getvalue()
        atomic_write(self.folder / f"{name}.npz", lambda f: f.write(npz))
        photos = [dict(p) for p in photos]
        for row, (j, size, extra) in enumerate(zip(rest["good"], rest["sizes"], extras)):
            photos[j].update(row=row, width=size[0], height=size[1], extra=extra)
        for j, reason in rest["bad"]:
            photos[j]["reason"] = reason
        manifest = {"format": SHARD_FORMAT, **self.identity, "count": len(vectors),
                    "npz_sha256": hashlib.sha256(npz).hexdigest(), "photos": photos}
        atomic_write_bytes(self.folder / f"{name}.json", json.dumps(manifest).encode())  # the commit point
        return to_batch(manifest, vectors, blobs, position)

    def read(self, name: str, position: Callable[[dict[str, Any]], int | None]) -> EmbeddedBatch | None:
        """The batch of a shard's photos to which `position` (given a photo's path, size and mtime_ns) gives a
        position in the list being embedded; None when the shard is of no use (see the module docstring)."""
        try:
            manifest = json.loads((self.folder / f"{name}.json").read_bytes())
            npz = (self.folder / f"{name}.npz").read_bytes()
            if (manifest.get("format") != SHARD_FORMAT or hashlib.sha256(npz).hexdigest() != manifest["npz_sha256"]
                    or any(manifest.get(k) != v for k, v in self.identity.items())):
                return None
            with np.load(io.BytesIO(npz), allow_pickle=False) as z:
                vectors, data, ends = z["vectors"], z["blobs"].tobytes(), z["ends"]
            blobs = [data[a:b] for a, b in zip([0, *ends[:-1].tolist()], ends.tolist())]
            where = {p["path"]: position(p) for p in manifest["photos"]}
            usable = {path: i for path, i in where.items() if i is not None}
            return to_batch(manifest, vectors, blobs, usable) if usable else None
        except (OSError, ValueError, KeyError, TypeError, IndexError, ImportError):  # torn, or another version
            return None

    def delete(self, name: str) -> None:
        (self.folder / f"{name}.json").unlink(missing_ok=True)  # the commit point goes first
        (self.folder / f"{name}.npz").unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete every shard and the folder (the store has saved what they held)."""
        for p in self.folder.glob("*"):
            p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()


def to_batch(manifest: dict[str, Any], vectors: np.ndarray, blobs: list[bytes],
             position: dict[str, int]) -> EmbeddedBatch:
    """The EmbeddedBatch of a shard's photos found in `position` (path -> position in the list)."""
    from byol.data import BadFile

    good = [p for p in manifest["photos"] if p["path"] in position and "row" in p]
    bad = [(position[p["path"]], BadFile(p["path"], p["reason"])) for p in manifest["photos"]
           if p["path"] in position and "reason" in p]
    rows = np.asarray([p["row"] for p in good], np.int64)
    return EmbeddedBatch([position[p["path"]] for p in good], np.ascontiguousarray(vectors[rows], np.float32),
                         [(p["width"], p["height"]) for p in good], [_decode_extra(p["extra"], blobs) for p in good],
                         bad)


def _encode_extra(extra: Any, blobs: list[bytes]) -> Any:
    """`also`'s result as JSON, without pickle: bytes and arrays go to the shard's npz (by number), tuples and
    lists become lists, a NamedTuple of this package is named so it comes back as itself."""
    if isinstance(extra, bytes):
        blobs.append(extra)
        return {"blob": len(blobs) - 1}
    if isinstance(extra, np.ndarray):
        blobs.append(np.ascontiguousarray(extra).tobytes())
        return {"array": len(blobs) - 1, "dtype": extra.dtype.str, "shape": list(extra.shape)}
    if isinstance(extra, np.generic):
        return extra.item()
    if isinstance(extra, tuple) and hasattr(extra, "_fields"):
        kind = type(extra)
        return {"tuple": f"{kind.__module__}:{kind.__qualname__}", "items": [_encode_extra(x, blobs) for x in extra]}
    if isinstance(extra, tuple | list):
        return [_encode_extra(x, blobs) for x in extra]
    return extra


def _decode_extra(extra: Any, blobs: list[bytes]) -> Any:
    if isinstance(extra, list):
        return tuple(_decode_extra(x, blobs) for x in extra)
    if not isinstance(extra, dict):
        return extra
    if "blob" in extra:
        return blobs[int(extra["blob"])]
    if "array" in extra:
        dtype = np.dtype(extra["dtype"])
        if dtype.hasobject:
            raise ValueError("a shard holds an array of Python objects")
        return np.frombuffer(blobs[int(extra["array"])], dtype).reshape(extra["shape"]).copy()
    return _named_tuple(extra["tuple"])(*(_decode_extra(x, blobs) for x in extra["items"]))


def _named_tuple(name: str) -> Any:
    """The NamedTuple class `module:Name`, only from this package's index/ and byol/ (a shard names nothing else)."""
    module, _, attr = name.partition(":")
    if module.split(".")[0] not in ("index", "byol"):
        raise ValueError(f"a shard names {name!r}, not one of byol-search's records")
    kind = getattr(importlib.import_module(module), attr, None)
    if not (isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields")):
        raise ValueError(f"a shard names {name!r}, not one of byol-search's records")
    return kind
