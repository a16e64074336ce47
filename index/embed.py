"""Running the exported encoder over photos with onnxruntime.

The model's own metadata says how to prepare its input (byol.preprocess.Preprocess, the same code as
training's evaluation transform) and what comes out (unit vectors of `dim` components). Photos are decoded
by byol.images.load_rgb, the pretraining decode path (EXIF orientation, modes, bomb guard, JPEG draft
mode, a reason for every bad file), on a thread pool WHILE the model runs on the previous batch: a
producer thread fills a bounded queue of ready batches (at most two waiting), so decoding and inference
overlap and memory stays flat however many files there are.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from byol.export import INPUT_NAME, read_metadata
from byol.fileio import core_count
from byol.images import BadImage, Source, load_rgb, photo_formats
from byol.preprocess import Preprocess

if TYPE_CHECKING:
    from byol.data import BadFile

log = logging.getLogger(__name__)
_QUEUE_BATCHES = 2  # decoded batches waiting for the model: enough to hide decoding jitter, little memory


@dataclass
class Decoded:
    """One photo ready for the encoder (made in a decode thread)."""

    pixels: np.ndarray  # size x size x 3 uint8, after Preprocess.resize_crop
    width: int  # the upright photo's width in pixels (from its header, not the reduced decode)
    height: int  # the upright photo's height in pixels
    extra: Any = None  # what the caller's `also(path, data, image)` returned


@dataclass
class EmbeddedBatch:
    """A batch of `Embedder.embed_paths` results; row j of `vectors` is paths[indices[j]]."""

    indices: list[int]  # positions in the input list of the images embedded in this batch
    vectors: np.ndarray  # len(indices) x dim float32 unit vectors
    sizes: list[tuple[int, int]]  # (width, height) of each embedded photo
    extras: list[Any]  # `also(...)` result per embedded photo (None without `also`)
    bad: list[tuple[int, BadFile]]  # (position, byol.data.BadFile) for each file in this stretch that could not be decoded


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, then the CPU (always last, as the fallback)."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider",) if p in have] + ["CPUExecutionProvider"]


class Embedder:
    """An exported byol-search encoder loaded in onnxruntime.

    Attributes: preprocess (Preprocess from the model metadata), dim, sha256 (of the .onnx file: the identity
    an index is tied to), checkpoint_sha256, metadata (byol.export.read_metadata), provider (the execution
    provider actually used, e.g. "CPUExecutionProvider").
    """

    def __init__(self, model_path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.model_path = Path(model_path).absolute()
        if not self.model_path.is_file():
            raise ValueError(f"{model_path}: no such model file; export one with "
                             "`byol-search export CHECKPOINT -o encoder.onnx`")
        self.metadata = read_metadata(self.model_path)
        self.preprocess = Preprocess.from_dict(self.metadata)
        self.dim = int(self.metadata["dim"])
        self.checkpoint_sha256 = self.metadata["checkpoint_sha256"]
        data = self.model_path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads or core_count()
        # decode threads share the cores: spinning inference threads would steal their time between batches
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(data, opts, providers=list(providers or default_providers()))
        self.provider = self.session.get_providers()[0]
        log.info("encoder %s (%d-d, %d px) on %s", self.model_path.name, self.dim, self.preprocess.size, self.provider)

    # ------------------------------------------------------------------ arrays and images
    def embed_array(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """N,3,H,W float32 (already preprocessed) -> N,dim float32 unit vectors."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = [self.session.run(None, {INPUT_NAME: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def embed_images(self, images: list[Image.Image], batch_size: int = 64) -> np.ndarray:
        """RGB PIL images (any size) -> (n, dim) float32 unit vectors, through the model's Preprocess."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_array(self.preprocess.batch([im.convert("RGB") for im in images]), batch_size)

    def embed_file(self, source: Source) -> np.ndarray:
        """One photo (path, bytes or file object) -> (dim,) unit vector; raises byol.images.BadImage."""
        vector: np.ndarray = self.embed_images([load_rgb(source, min_side=self.preprocess.resize)])[0]
        return vector

    # ------------------------------------------------------------------ files, pipelined
    def embed_paths(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 64,
        workers: int | None = None,
        min_side: int | None = None,
        also: Callable[[Path, bytes, Image.Image], Any] | None = None,
        desc: str = "embedding",
    ) -> Iterator[EmbeddedBatch]:
        """Embed files, decoding on `workers` threads (default: one per core) while the model runs.

        Yields EmbeddedBatch in input order, each with up to `batch_size` embedded photos plus the files of
        that stretch that could not be decoded (as byol.data.BadFile with the reason). `min_side` (default
        preprocess.resize) lets JPEG draft mode decode large photos at a reduced scale; `also(path, data,
        image)` runs in the decode thread on the file's bytes and the decoded upright RGB image (the index
        uses it for the content hash and the thumbnail). A progress bar shows rate and ETA.
        """
        decode = functools.partial(_decode_file, pre=self.preprocess, min_side=min_side or self.preprocess.resize,
                                   also=also)
        ahead = _DecodeAhead(paths, decode, workers, batch_size, desc)
        try:
            for chunk in ahead:
                yield self._embed_chunk(chunk, batch_size)
        finally:
            ahead.close()

    def _embed_chunk(self, chunk: list[tuple[int, Any]], batch_size: int) -> EmbeddedBatch:
        """One chunk of (position, Decoded or BadFile) -> its EmbeddedBatch (the bad files passed along)."""
        from byol.data import BadFile

        good = [(i, r) for i, r in chunk if not isinstance(r, BadFile)]
        bad = [(i, r) for i, r in chunk if isinstance(r, BadFile)]
        if good:
            vectors = self.embed_array(self.preprocess.normalize(np.stack([r.pixels for _, r in good])), batch_size)
        else:
            vectors = np.zeros((0, self.dim), np.float32)
        return EmbeddedBatch([i for i, _ in good], vectors, [(r.width, r.height) for _, r in good],
                             [r.extra for _, r in good], bad)


def _decode_file(path: str | Path, pre: Preprocess, min_side: int,
                 also: Callable[[Path, bytes, Image.Image], Any] | None) -> Decoded:
    """Run in a decode thread: read and decode one file, ready for the encoder; raises BadImage naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadImage(str(path), f"cannot read ({e.strerror or type(e).__name__})") from e
    try:
        img = load_rgb(data, min_side=min_side)
    except BadImage as e:
        raise BadImage(str(path), e.reason) from e
    w, h = photo_size(data, img)
    return Decoded(pre.to_uint8(img), w, h, also(path, data, img) if also else None)


class _DecodeAhead:
    """Chunks of decoded files, made by a producer thread while the consumer embeds the previous chunk.

    Iterating yields, in input order, lists of (position, Decoded or byol.data.BadFile) holding `batch_size`
    decoded photos each (the last may hold fewer); at most _QUEUE_BATCHES wait, so memory stays flat. An
    exception in the producer is raised in the consumer. close() stops the producer and waits for it.
    """

    _DONE = object()  # put after the last chunk

    def __init__(self, paths: Sequence[str | Path], decode: Callable[[str | Path], Decoded],
                 workers: int | None, batch_size: int, desc: str) -> None:
        self.ready: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_BATCHES)  # chunks, then _DONE or an exception
        self.stop = threading.Event()
        self.producer = threading.Thread(target=self._produce, args=(paths, decode, workers, batch_size, desc),
                                         name="embed-decode", daemon=True)
        self.producer.start()

    def _produce(self, paths: Sequence[str | Path], decode: Callable[[str | Path], Decoded],
                 workers: int | None, batch_size: int, desc: str) -> None:
        from byol.data import BadFile, decode_many

        try:
            chunk, good = [], 0
            for i, r in decode_many(paths, decode, workers, desc=desc):
                if self.stop.is_set():
                    return
                chunk.append((i, r))
                good += not isinstance(r, BadFile)
                if good >= batch_size:
                    self.ready.put(chunk)
                    chunk, good = [], 0
            if chunk:
                self.ready.put(chunk)
            self.ready.put(self._DONE)
        except BaseException as e:  # handed to the consumer, which raises it
            self.ready.put(e)

    def __iter__(self) -> Iterator[list[tuple[int, Any]]]:
        while True:
            chunk = self.ready.get()
            if chunk is self._DONE:
                return
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk

    def close(self) -> None:
        self.stop.set()
        while self.producer.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            try:
                self.ready.get(timeout=0.05)
            except queue.Empty:
                pass


def photo_size(data: bytes, decoded: Image.Image) -> tuple[int, int]:
    """(width, height) of the upright photo from its header: the decode may have been reduced (draft mode)."""
    try:
        with Image.open(io.BytesIO(data), formats=photo_formats()) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
        return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    except Exception:  # an odd header that still decoded: the decoded size is the best we know
        return decoded.size

