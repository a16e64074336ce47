"""Shard files of the Ray engine (index/shards.py): round trips, the commit point, and what is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from index.photohash import Signature
from index.shards import ShardFolder

IDENTITY = {"model_sha256": "a" * 64, "preprocess": {"size": 32}}


def shard(tmp_path, identity=IDENTITY):
    """A folder holding one shard of 3 photos, the second unreadable; returns (folder, written batch)."""
    folder = ShardFolder(tmp_path / "shards", identity)
    photos = [{"path": f"/p/{i}.jpg", "size": 10 + i, "mtime_ns": 100 + i} for i in range(3)]
    vectors = np.eye(2, 4, dtype=np.float32)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rest = {"good": [0, 2], "sizes": [(64, 48), (80, 80)], "bad": [(1, "truncated file")],
            "extras": [("f" * 64, b"\xff\xd8jpeg", Signature(-5, grey, None)),
                       ("e" * 64, b"", Signature(2**62, grey[:1], 1.5e9))]}
    batch = folder.write("s1", photos, vectors, rest, {"/p/0.jpg": 7, "/p/1.jpg": 8, "/p/2.jpg": 9})
    return folder, batch


def everything(photo):
    return {"/p/0.jpg": 7, "/p/1.jpg": 8, "/p/2.jpg": 9}[photo["path"]]


def test_round_trip(tmp_path):
    folder, written = shard(tmp_path)
    read = folder.read("s1", everything)
    for batch in (written, read):
        assert batch.indices == [7, 9] and batch.sizes == [(64, 48), (80, 80)]
        assert [(i, b.path, b.reason) for i, b in batch.bad] == [(8, "/p/1.jpg", "truncated file")]
        np.testing.assert_array_equal(batch.vectors, np.eye(2, 4, dtype=np.float32))
        sha, thumb, sig = batch.extras[0]
        assert (sha, thumb) == ("f" * 64, b"\xff\xd8jpeg") and isinstance(sig, Signature)
        assert sig.phash == -5 and sig.taken is None and sig.grey.dtype == np.uint8
        np.testing.assert_array_equal(sig.grey, np.arange(12, dtype=np.uint8).reshape(3, 4))
        assert batch.extras[1][2].phash == 2**62 and batch.extras[1][2].taken == 1.5e9
    assert folder.names() == ["s1"]
    # only the photos the caller still wants come back
    part = folder.read("s1", lambda p: 0 if p["path"] == "/p/2.jpg" else None)
    assert part.indices == [0] and part.bad == [] and part.extras[0][0] == "e" * 64
    assert folder.read("s1", lambda p: None) is None
    folder.clear()
    assert not (tmp_path / "shards").exists()


def test_what_is_of_no_use(tmp_path):
    folder, _ = shard(tmp_path)
    assert ShardFolder(folder.folder, {**IDENTITY, "model_sha256": "b" * 64}).read("s1", everything) is None
    (folder.folder / "s1.npz").write_bytes((folder.folder / "s1.npz").read_bytes()[:-5])  # torn
    assert folder.read("s1", everything) is None
    folder, _ = shard(tmp_path / "again")
    (folder.folder / "s1.json").unlink()  # killed before its commit point: not a shard
    assert folder.names() == [] and folder.read("s1", everything) is None


# each would build without complaint from the three items if the manifest's name were trusted
@pytest.mark.parametrize("name", ["builtins:slice", "index.embed:Decoded"])
def test_a_manifest_names_only_records_of_this_package(tmp_path, name):
    """A manifest is a file on disk: what it names is never called unless it is a NamedTuple of byol/ or index/."""
    folder, _ = shard(tmp_path)
    path = folder.folder / "s1.json"
    m = json.loads(path.read_text())
    m["photos"][0]["extra"][2]["tuple"] = name
    path.write_text(json.dumps(m))
    assert folder.read("s1", everything) is None
