"""The thumbnails of an index: INDEX_DIR/thumbs/<id // 1000>/<id>.jpg, THUMB_SIDE pixels on the longest side.

Named by the photo's id (the store's id, so its FAISS id and SQLite row), a thousand to a folder. They are the
only pictures of the collection the page serves besides the 1024 px previews (index/preview.py), and made at
index time from the decoded photo (`thumbnail_jpeg`, in a decode thread). The store deletes those of removed
photos once the save that removes them has committed (index/store.py).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from byol.fileio import atomic_write_bytes

THUMB_SIDE = 256  # thumbnails: longest side in pixels (the page never serves full-size photos)


def thumbnail_jpeg(image: Image.Image, side: int = THUMB_SIDE) -> bytes:
    """JPEG bytes of `image` shrunk to `side` on its longest side (never enlarged)."""
    img = image.convert("RGB") if image.mode != "RGB" else image.copy()
    img.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class Thumbnails:
    """The thumbs/ folder of one index."""

    def __init__(self, index_dir: Path):
        self.root = Path(index_dir) / "thumbs"

    def path(self, image_id: int) -> Path:
        """Where the thumbnail of `image_id` lives (it may be missing for a file that failed to decode)."""
        image_id = int(image_id)
        return self.root / str(image_id // 1000) / f"{image_id}.jpg"

    def put(self, image_id: int, image: Image.Image | bytes) -> Path:
        """Write the thumbnail of `image_id`, replacing any old one: a PIL image (made into a JPEG of THUMB_SIDE
        on the longest side) or JPEG bytes from `thumbnail_jpeg` (made in a decode thread)."""
        path = self.path(image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = image if isinstance(image, bytes) else thumbnail_jpeg(image)
        atomic_write_bytes(path, data, durable=False)  # a lost thumbnail is made again; no fsync per photo
        return path

    def remove(self, ids: Iterable[int]) -> None:
        """Delete the thumbnails of `ids` (those missing already are fine)."""
        for i in ids:
            self.path(i).unlink(missing_ok=True)
