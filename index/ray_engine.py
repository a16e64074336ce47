"""The Ray engine for `index`: the photos to embed, cut into shards, decoded and embedded on a Ray cluster,
each finished shard written once into INDEX_DIR/shards/ before the store takes it in.

One shard's work: a CPU task (`decode_shard`, one CPU) reads and decodes its photos with the local engine's own
decode (index/embed.py over byol.images.load_rgb: the allow-list, bomb guard, EXIF orientation, a reason for
every bad file) and the caller's `also` (the content hash, thumbnail and perceptual hash), and returns the
encoder-ready pixels and the rest as two objects; an actor of the pool (`Encoder`: one onnxruntime session,
one GPU each where the cluster has GPUs) turns the pixels into vectors. The driver writes each finished shard
into INDEX_DIR/shards/ (index/shards.py: vectors, rows, bad files and a manifest, the commit point) and hands
it to index/build.py, which adds it to the store exactly as the local engine's batches. Shards are handed over
in the order of the photo list, so a path gets the id the local engine would give it.

A killed driver, a lost node or Ctrl-C loses at most the shards in flight: the next run takes every photo
whose (path, size, mtime) a finished shard of the same encoder holds from that shard, and cuts only the
rest into new shards; each photo is in exactly one. Shards are deleted once the store has saved them.

Surviving a lost node, by design rather than by hope:
- decode tasks are retried by Ray (`max_retries`), and their lost outputs are rebuilt from lineage;
- actors restart on another node (`max_restarts=-1`) and run again the calls they lost (`max_task_retries`);
- on a CPU cluster an actor reserves no CPU (its threads share a node's cores with the decode tasks, as the
  local engine's threads do), so after a node is gone the restarted pool can never hold every CPU and starve
  the decode tasks it waits for. That starvation is how a plain Ray Data pipeline (`map_batches` into a pool
  of one-CPU actors, 3 one-CPU nodes) hung for minutes when a node was removed; the same pipeline with actors
  at half a CPU finished;
- a shard whose calls still fail is submitted again whole, up to `max_attempts` times, before the run stops
  with the error (its finished shards kept).

An index that goes on disk (past the store's memory limit, index/ondisk.py) while the engine runs has its IVF
shards encoded on the cluster too: the engine offers the store a `ShardRunner`, which runs each shard (one
chunk of the base's vectors, encoded with the quantizers the driver trained on a sample) as a one-CPU task
that reads the base's files in INDEX_DIR and writes its shard file there; the driver merges the shards. The
tasks need INDEX_DIR where they run (one machine, or a shared filesystem): a shard whose task fails is
encoded on the driver instead, the same file either way.

Why Ray tasks and an actor pool, not Ray Data: the unit this engine must see is the shard (written once when
complete, submitted again whole when lost, skipped by the next run, handed to the store in list order), and a
Ray Data stream gives blocks in its own order with one failure for the whole dataset.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import socket
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from byol.fileio import core_count
from byol.preprocess import Preprocess
from index.embed import Decoded, EmbeddedBatch, Embedder
from index.embed import _decode_file as decode_file  # the local engine's decode, shared rather than copied
from index.ivfshards import ShardWork, encode_shard, offer_runner
from index.shards import SHARD_DIR, ShardFolder

log = logging.getLogger(__name__)

SHARD_SIZE = 1000  # photos per shard: what a lost node or a kill can cost, and one file pair per shard
MIN_SHARDS = 32  # a small run is still cut this finely, so that every decoding CPU of a cluster has work
CPUS_PER_SESSION = 4  # on a cluster without GPUs: one encoder session (of as many threads) per 4 CPUs
_PROBE_S = 5.0  # seconds to wait for HOST:PORT to answer before ray.init (which waits minutes on a wrong one)


class RayEngineError(Exception):
    """Ray is missing, the cluster cannot be reached, or a shard kept failing; the message says what to do."""


@dataclass
class RayConfig:
    """How `index --engine ray` uses the cluster."""

    address: str | None = None  # None: a Ray started on this machine for the run; "auto" or HOST:PORT: a cluster
    shard_size: int = SHARD_SIZE  # photos per shard at most (fewer when the run has under MIN_SHARDS x as many)
    actors: int | None = None  # encoder sessions: default one per GPU, else one per CPUS_PER_SESSION CPUs
    max_attempts: int = 3  # submissions of one shard before the run stops with its error


# -------------------------------------------------------------------- what runs on the cluster
def decode_shard(paths: Sequence[str], preprocess: dict[str, Any],
                 also: Callable[[Path, bytes, Any], Any] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """A CPU task: decode one shard's photos -> (n_good x size x size x 3 uint8 pixels, the rest).

    The rest: `good` (positions in `paths`), `sizes`, `extras` (what `also` returned) and `bad` (position,
    reason). A file that cannot be read is a bad file, never a failed task.
    """
    from byol.data import BadFile, decode_many

    pre = Preprocess.from_dict(preprocess)
    decode = functools.partial(decode_file, pre=pre, min_side=pre.resize, also=also)
    pixels: list[np.ndarray] = []
    rest: dict[str, list[Any]] = {"good": [], "sizes": [], "extras": [], "bad": []}
    for i, r in decode_many(paths, decode, workers=0, progress=False):
        if isinstance(r, BadFile):
            rest["bad"].append((i, r.reason))
        elif isinstance(r, Decoded):
            pixels.append(r.pixels)
            rest["good"].append(i)
            rest["sizes"].append((r.width, r.height))
            rest["extras"].append(r.extra)
    side = pre.size
    return (np.stack(pixels) if pixels else np.zeros((0, side, side, 3), np.uint8)), rest


class Encoder:
    """An actor of the pool: one onnxruntime session of the exported encoder."""

    def __init__(self, model_path: str, batch_size: int, on_gpu: bool) -> None:
        # on CPUs, a session's threads are its share of a node's cores, not all of them (sessions share nodes)
        threads = None if on_gpu else min(core_count(), CPUS_PER_SESSION)
        self.embedder, self.batch_size = Embedder(model_path, threads=threads), batch_size

    def identity(self) -> tuple[str, str]:
        """(the encoder file's sha256 on this node, the provider it runs on)."""
        return self.embedder.sha256, self.embedder.provider

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """n x size x size x 3 uint8 -> n x dim float32 unit vectors (index/embed.py's own preprocessing)."""
        e = self.embedder
        return e.embed_array(e.preprocess.normalize(pixels), self.batch_size)


class ShardRunner:
    """index/ivfshards.py's Runner on the cluster: each shard of an on-disk base one Ray task (see the module
    docstring); the shard files in the order given."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.on_cluster = 0  # shards encoded by cluster tasks so far (the others: on the driver)

    def __call__(self, works: list[ShardWork]) -> list[Path]:
        with connected(self.address) as ray:
            task = ray.remote(num_cpus=1, max_retries=3)(encode_shard)
            refs = [task.remote(w) for w in works]  # as many at once as the cluster has CPUs
            out = []
            for w, ref in zip(works, refs):
                try:
                    out.append(Path(ray.get(ref)))
                    self.on_cluster += 1
                except ray.exceptions.RayError as e:
                    log.warning("shard %s failed on the cluster (%s); encoding it here",
                                w.out.name, str(e).strip().splitlines()[-1])
                    out.append(encode_shard(w))
        log.info("index on disk: %d of %d shards encoded as Ray tasks", self.on_cluster, len(works))
        return out


# -------------------------------------------------------------------- connecting
@contextlib.contextmanager
def connected(address: str | None) -> Iterator[Any]:
    """The `ray` module, connected: to `address`, or to a Ray started on this machine (shut down after).

    A Ray already initialised in this process (a test's cluster, a notebook) is used as it is.
    """
    try:
        import ray
    except ImportError:
        raise RayEngineError("--engine ray needs Ray: pip install 'byol-search[ray]' (on every node of the "
                             "cluster), or leave --engine out to embed on this machine") from None
    if ray.is_initialized():
        yield ray
        return
    _probe(address)
    try:
        if address is None:  # "local": a new Ray, never a cluster some earlier `ray start` left recorded
            ray.init(address="local", num_cpus=core_count(), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = "could not start Ray on this machine" if address is None else f"--ray-address {address}: cannot join"
        raise RayEngineError(f"{where} ({e}); see `ray status`, or use --engine local") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _probe(address: str | None) -> None:
    """Refuse at once an address where nothing listens: ray.init waits minutes on one, then exits the process.

    "auto" is first resolved as Ray resolves it (RAY_ADDRESS, then the cluster `ray start` last recorded on
    this machine, which may be long gone).
    """
    if address is None or "://" in address:
        return
    hint = "start the cluster with `ray start --head`, or leave --ray-address out to run Ray on this machine"
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            resolved = canonicalize_bootstrap_address("auto")
        except ImportError:  # another Ray version: ray.init resolves and reports it
            return
        except (ConnectionError, ValueError) as e:
            raise RayEngineError(f"--ray-address auto: no Ray cluster found on this machine ({e}); {hint}") from None
        if resolved is None:
            raise RayEngineError(f"--ray-address auto: no Ray cluster found on this machine; {hint}")
        address = resolved
        named = f"auto ({resolved}, the cluster last recorded here)"
    else:
        named = address
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayEngineError(f"--ray-address {address!r}: give auto or HOST:PORT (the head node's GCS port, "
                             "6379 by default)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_S).close()
    except OSError as e:
        raise RayEngineError(f"--ray-address {named}: nothing answers there ({e.strerror or e}); {hint}") from None


# -------------------------------------------------------------------- the engine
@dataclass
class _Shard:
    name: str
    positions: list[int]  # positions of its photos in the list being embedded


class RayEngine:
    """Embeds a photo list on a Ray cluster in resumable shards; see the module docstring.

    `embed` yields index/embed.py's EmbeddedBatch, one per shard, in the order of the list (indices are
    positions in it), after the shard is on disk; `finished` deletes the shards once the store has saved them.
    """

    def __init__(self, cfg: RayConfig, index_dir: Path, embedder: Embedder,
                 log: Callable[[str], object] = print) -> None:
        self.cfg, self.embedder, self.log = cfg, embedder, log
        self.shards = ShardFolder(Path(index_dir) / SHARD_DIR, {"model_sha256": embedder.sha256,
                                                                 "preprocess": embedder.preprocess.to_dict()})
        self.resumed = 0  # photos of the last `embed` taken from shards an earlier run finished
        self.handed: list[str] = []  # shards handed over since the store last saved
        # a base the store builds while this engine lives encodes its shards on the cluster (held weakly there)
        self.index_dir, self.shard_runner = Path(index_dir), ShardRunner(cfg.address)
        offer_runner(self.index_dir, self.shard_runner)

    def embed(self, paths: Sequence[str], stats: dict[str, tuple[int, int]], batch_size: int,
              also: Callable[[Path, bytes, Any], Any] | None = None) -> Iterator[EmbeddedBatch]:
        """Embed `paths` ((size, mtime_ns) of each in `stats`), taking what finished shards already hold."""
        units, done = self._plan(paths, stats)
        todo = [u for u in units if isinstance(u, _Shard)]
        self.resumed = sum(len(b.indices) + len(b.bad) for b in done.values())
        if done:
            self.log(f"resuming: {self.resumed} photos from {len(done)} shards an earlier run finished, "
                     f"{len(paths) - self.resumed} to embed in {len(todo)} shards")
        counts = (len(paths), self.resumed, len(units), len(done))
        computed = self._compute(todo, paths, stats, batch_size, also, counts)
        try:
            for unit in units:
                batch = next(computed) if isinstance(unit, _Shard) else done[unit]
                self.handed.append(unit.name if isinstance(unit, _Shard) else unit)
                yield batch
        finally:
            computed.close()  # a caller that stops early ends the pool and Ray now, not when collected

    def saved(self) -> None:
        """Delete the shards handed over so far: the store has saved what they held (disk stays bounded)."""
        for name in self.handed:
            self.shards.delete(name)
        self.handed.clear()

    def finished(self) -> None:
        """Delete every shard: the store has saved what they held. Bases built later encode here again."""
        self.shards.clear()
        offer_runner(self.index_dir, None)

    # -- which photos finished shards hold, and the new shards for the rest
    def _plan(self, paths: Sequence[str], stats: dict[str, tuple[int, int]]
              ) -> tuple[list[_Shard | str], dict[str, EmbeddedBatch]]:
        """Units in list order (a new _Shard, or the name of a finished shard) and the finished shards' batches."""
        where = {p: i for i, p in enumerate(paths)}
        taken: set[int] = set()
        done: dict[str, EmbeddedBatch] = {}

        def position(photo: dict[str, Any]) -> int | None:  # still to embed, unchanged, in no other shard
            i = where.get(photo["path"])
            ok = i is not None and i not in taken and stats.get(photo["path"]) == (photo["size"], photo["mtime_ns"])
            return i if ok else None

        for name in self.shards.names():
            batch = self.shards.read(name, position)
            if batch is None:
                self.shards.delete(name)  # another encoder, changed files, already saved, or torn: of no use
            else:
                done[name] = batch
                taken.update(batch.indices, (i for i, _ in batch.bad))
        rest = [i for i in range(len(paths)) if i not in taken]
        size = max(1, min(self.cfg.shard_size, -(-len(rest) // MIN_SHARDS)))
        new = [self._new_shard(paths, stats, rest[k:k + size]) for k in range(0, len(rest), size)]
        first = {name: min(b.indices + [i for i, _ in b.bad]) for name, b in done.items()}
        units: list[tuple[int, _Shard | str]] = [(s.positions[0], s) for s in new] + [(i, n) for n, i in first.items()]
        return [u for _, u in sorted(units, key=lambda t: t[0])], done

    def _new_shard(self, paths: Sequence[str], stats: dict[str, tuple[int, int]], positions: list[int]) -> _Shard:
        h = hashlib.sha256(self.embedder.sha256.encode())
        for i in positions:
            h.update(f"\0{paths[i]}\0{stats[paths[i]]}".encode(errors="surrogateescape"))
        return _Shard(h.hexdigest()[:24], positions)

    # -- running shards on the cluster
    def _compute(self, shards: list[_Shard], paths: Sequence[str], stats: dict[str, tuple[int, int]],
                 batch_size: int, also: Callable[[Path, bytes, Any], Any] | None,
                 counts: tuple[int, int, int, int]) -> Generator[EmbeddedBatch, None, None]:
        """Run `shards` on the cluster; yields their batches in the order given, each after it is written.
        `counts` (photos, photos done, shards, shards done) start the progress bar once the cluster is up;
        no shards: nothing is started."""
        if not shards:
            return
        with connected(self.cfg.address) as ray, contextlib.closing(_Pool(ray, self.cfg, self.embedder, batch_size,
                                                                          also)) as pool, _Bar(*counts) as bar:
            ready: dict[int, EmbeddedBatch] = {}
            nxt = 0
            for k, (vectors, rest) in pool.run([[paths[i] for i in s.positions] for s in shards]):
                s = shards[k]
                photos = [{"path": paths[i], "size": stats[paths[i]][0], "mtime_ns": stats[paths[i]][1]}
                          for i in s.positions]
                ready[k] = self.shards.write(s.name, photos, vectors, rest, {paths[i]: i for i in s.positions})
                bar.shard_done(len(s.positions))
                while nxt in ready:
                    yield ready.pop(nxt)
                    nxt += 1

class _Pool:
    """The actor pool and the decode tasks on a connected cluster; `run` keeps a window of shards in flight."""

    def __init__(self, ray: Any, cfg: RayConfig, embedder: Embedder, batch_size: int,
                 also: Callable[[Path, bytes, Any], Any] | None) -> None:
        self.ray, self.cfg, self.also = ray, cfg, also
        self.preprocess = embedder.preprocess.to_dict()
        res = ray.cluster_resources()
        gpus, self.cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
        n = cfg.actors or (gpus if gpus else max(1, self.cpus // CPUS_PER_SESSION))
        # on GPUs, one GPU and one CPU feed each session; on CPUs, no reservation (see the module docstring)
        opts = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 0, "scheduling_strategy": "SPREAD"}
        actor = ray.remote(max_restarts=-1, max_task_retries=-1, **opts)(Encoder)
        self.actors = [actor.remote(str(embedder.model_path), batch_size, bool(gpus)) for _ in range(n)]
        self.decode = ray.remote(num_cpus=1, max_retries=5, retry_exceptions=False)(decode_shard)
        self.busy = [0] * n  # shards in flight per actor
        try:
            self._check(embedder)
        except BaseException:
            self.close()
            raise
        log.info("ray: %d CPUs, %d GPUs, %d encoder sessions", self.cpus, gpus, n)

    def close(self) -> None:
        """End the actors (a cluster outlives the run; its sessions should not)."""
        for a in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(a)

    def _check(self, embedder: Embedder) -> None:
        """Every actor runs the driver's encoder (the same file on every node)."""
        try:
            identities = self.ray.get([a.identity.remote() for a in self.actors])
        except self.ray.exceptions.RayError as e:  # the session could not start there: the file missing, ...
            raise RayEngineError(f"an encoder session could not start on the cluster (is {embedder.model_path} "
                                 f"on every node?): {str(e).strip().splitlines()[-1]}") from None
        log.info("encoder sessions on %s", ", ".join(sorted({p for _, p in identities})))
        for sha, _ in identities:
            if sha != embedder.sha256:
                raise RayEngineError(f"{embedder.model_path} differs on a node of the cluster (sha256 "
                                     f"{sha[:12]}, here {embedder.sha256[:12]}): the encoder must be the same "
                                     "file at the same path on every node")

    def _submit(self, paths: list[str]) -> tuple[Any, Any, int]:
        a = min(range(len(self.actors)), key=self.busy.__getitem__)
        pixels, rest = self.decode.options(num_returns=2).remote(paths, self.preprocess, self.also)
        self.busy[a] += 1
        return self.actors[a].embed.remote(pixels), rest, a

    def run(self, shards: list[list[str]]) -> Iterator[tuple[int, tuple[np.ndarray, dict[str, Any]]]]:
        """Yield (k, (vectors, rest)) for each shard as it finishes; a failed shard is submitted again."""
        window = self.cpus + 2 * len(self.actors)  # decode tasks for every CPU, two shards queued per session
        flight: dict[Any, tuple[int, Any, int, int]] = {}  # vectors ref -> (k, rest ref, actor, attempt)
        queue = list(range(len(shards)))[::-1]
        try:
            while queue or flight:
                # shards are handed over in order: while one is slow (its node lost), the finished ones after
                # it wait in memory, so no shard starts more than 4 windows past the oldest one unfinished
                oldest = min((f[0] for f in flight.values()), default=queue[-1] if queue else 0)
                while queue and len(flight) < window and queue[-1] < oldest + 4 * window:
                    k = queue.pop()
                    vec, rest, a = self._submit(shards[k])
                    flight[vec] = (k, rest, a, 1)
                ready, _ = self.ray.wait(list(flight), num_returns=1, timeout=1.0)
                for ref in ready:
                    k, rest, a, attempt = flight.pop(ref)
                    self.busy[a] -= 1
                    try:
                        yield k, (self.ray.get(ref), self.ray.get(rest))
                    except self.ray.exceptions.RayError as e:
                        flight.update(self._again(shards, k, attempt, e))
        finally:
            for ref in flight:
                self.ray.cancel(ref, force=False)

    def _again(self, shards: list[list[str]], k: int, attempt: int, error: Exception) -> dict[Any, Any]:
        if attempt >= self.cfg.max_attempts:
            raise RayEngineError(f"a shard of {len(shards[k])} photos (from {shards[k][0]}) failed {attempt} "
                                 f"times; the shards finished so far are kept, run again to resume: {error}")
        log.warning("shard %d failed (%s); submitting it again", k, type(error).__name__)
        vec, rest, a = self._submit(shards[k])
        return {vec: (k, rest, a, attempt + 1)}


class _Bar:
    """tqdm over photos (rate and ETA across the cluster), with the shards done in its postfix."""

    def __init__(self, total: int, initial: int, shards: int, shards_done: int) -> None:
        from tqdm import tqdm

        self.tqdm = tqdm(total=total, initial=initial, desc="embedding (ray)", unit="img", dynamic_ncols=True,
                         disable=total == 0)
        self.shards, self.done = shards, shards_done
        self.tqdm.set_postfix_str(f"shards {shards_done}/{shards}", refresh=False)

    def shard_done(self, photos: int) -> None:
        self.done += 1
        self.tqdm.set_postfix_str(f"shards {self.done}/{self.shards}", refresh=False)
        self.tqdm.update(photos)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tqdm.close()
