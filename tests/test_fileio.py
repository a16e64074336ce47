"""byol.fileio: atomic replacement, nothing left behind by a failing writer, hashes, the core count."""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from byol import fileio
from byol.fileio import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_path,
    core_count,
    file_sha256,
    fsync_dir,
)


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != name)


def test_atomic_write_replaces_the_content(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old content, longer than the new one")
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
    assert _leftovers(tmp_path, "a.bin") == []


def test_atomic_write_bytes_text_and_bytes(tmp_path):
    atomic_write_bytes(tmp_path / "t.txt", "café\n")
    assert (tmp_path / "t.txt").read_bytes() == "café\n".encode()
    atomic_write_bytes(tmp_path / "t.txt", b"\x00\x01", durable=False)
    assert (tmp_path / "t.txt").read_bytes() == b"\x00\x01"
    assert _leftovers(tmp_path, "t.txt") == []


def test_atomic_write_creates_the_folder_and_gives_normal_permissions(tmp_path):
    target = tmp_path / "new" / "deeper" / "f.json"
    atomic_write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert target.stat().st_mode & 0o777 == fileio.FILE_MODE  # not mkstemp's 0600


@pytest.mark.parametrize("form", ["callback", "path"])
def test_a_failing_writer_leaves_the_old_file_and_no_temporary_file(tmp_path, form):
    target = tmp_path / "keep.bin"
    target.write_bytes(b"the old content")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise RuntimeError("writer failed")

    def half_then_fail_path(name):
        Path(name).write_bytes(b"half of the new")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        if form == "callback":
            atomic_write(target, half_then_fail)
        else:
            atomic_write_path(target, half_then_fail_path)
    assert target.read_bytes() == b"the old content"
    assert _leftovers(tmp_path, "keep.bin") == []


def test_atomic_write_path_for_writers_that_want_a_name(tmp_path):
    target = tmp_path / "v.faiss"
    target.write_bytes(b"generation 0")
    seen = []

    def write(name: str) -> None:
        seen.append(name)
        assert Path(name).parent == tmp_path and Path(name) != target  # a temporary file beside the target
        Path(name).write_bytes(b"generation 1")

    atomic_write_path(target, write)
    assert target.read_bytes() == b"generation 1" and len(seen) == 1 and not Path(seen[0]).exists()
    assert _leftovers(tmp_path, "v.faiss") == []


def test_readers_never_see_a_partial_file(tmp_path):
    """Another process reading while the file is rewritten sees the old or the new content, nothing else."""
    target = tmp_path / "f.bin"
    old, new = b"a" * 200_000, b"b" * 300_000
    target.write_bytes(old)
    reader = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "seen = set()\n"
         "end = time.time() + 1.0\n"
         "while time.time() < end:\n"
         f"    seen.add(len(open({str(target)!r}, 'rb').read()))\n"
         "print(sorted(seen))\n"],
        stdout=subprocess.PIPE, text=True)
    for i in range(40):
        atomic_write_bytes(target, new if i % 2 == 0 else old, durable=False)
    out = reader.communicate(timeout=30)[0]
    assert set(ast.literal_eval(out)) <= {len(old), len(new)}


def test_file_sha256_of_a_known_content(tmp_path):
    p = tmp_path / "abc"
    p.write_bytes(b"abc")
    # FIPS 180-2, appendix B.1
    assert file_sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = tmp_path / "big"
    data = os.urandom(3 * (1 << 20) + 17)  # more than one read chunk
    big.write_bytes(data)
    assert file_sha256(str(big)) == hashlib.sha256(data).hexdigest()


def test_fsync_dir_accepts_a_folder(tmp_path):
    fsync_dir(tmp_path)
    fsync_dir(str(tmp_path))


def test_core_count_follows_the_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert core_count() == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert core_count() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert core_count() == 1


def test_fileio_does_not_import_torch():
    code = "import sys, byol.fileio; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"
