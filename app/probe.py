"""The page's probe: trained on the label database (app/labels.py), it predicts every photo, estimates its own
accuracy, picks the photos to label next and turns predictions into labels when a person accepts them.

The probe is logistic regression on the embeddings (byol.probe.fit_page), its confidence calibrated by
cross-validation, trained from as few as one labelled photo per class; its weights and bias are stored as a
LinearProbe's in the labels file's `probes` table. On folders shaped like real ones the classifier that
averaged over each photo's neighbours lost to it on some folders and label counts (BENCHMARKS.md), so it is no
longer trained; a probe stored by it (features 'neighbours') still predicts over the index's neighbour graph
(index/neighbours.py), which is found only for such a probe (`needs_graph`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.labels import Labels, Prediction, Progress, no_progress

if TYPE_CHECKING:
    from byol.probe import LinearProbe
    from index.store import Store

# Where each step of Train and Predict sits on the progress bar (fractions of it)
TRAIN_READING = 0.0  # reading the labels and their embeddings
TRAIN_FITTING = 0.1  # fitting and cross-validating the probe
TRAIN_PREDICTING = (0.3, 0.9)  # predicting every photo (the span Predict's own steps are drawn into)
PREDICT_GRAPH = 0.3  # finding the neighbour graph (an old neighbour probe only) ends here
PREDICT_ROWS = 0.8  # predicting the photos in chunks ends here
PREDICT_SAVING = 0.9  # writing every prediction

# Up to this many labelled photos the fit runs on one torch thread: it is hundreds of tiny ops, and a second
# thread only adds hand-offs, which cost 8x on a busy 2-core machine (measured: 8 s against 1 s)
ONE_THREAD_UP_TO = 20000


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch on n threads inside the block."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _within(progress: Progress, start: float, end: float) -> Progress:
    """A progress callback that draws 0..1 into start..end of `progress`."""
    return lambda f, d: progress(start + (end - start) * f, d)


@dataclass
class ProbeReport:
    version: int  # probes.version of the probe that made the predictions
    classes: list[str]  # label names, in the probe's class order
    counts: dict[str, int]  # labelled photos per class used for training
    accuracy: float | None  # estimated accuracy on the unlabelled photos (byol.probe.estimate); None: too few labels
    predicted: int  # photos given a prediction
    seconds: float  # wall time of fit + estimate + predict + save
    accuracy_range: tuple[float, float] | None = None  # (low, high) around the estimate


class Probe:
    """The probe of one label database. Thread-safe as the database is: the page calls it from worker threads."""

    def __init__(self, labels: Labels):
        from index.neighbours import GraphCache

        self.labels = labels
        self._graphs = GraphCache()  # the index's neighbour graph, found once per version of the index

    # ---------------------------------------------------------------- training
    def train(self, store: Store, weight_decay: float | None = None, progress: Progress = no_progress) -> ProbeReport:
        """Fit the probe on every labelled photo still in the index, predict all, estimate its accuracy.

        The probe is logistic regression on the embeddings (byol.probe.fit_page; weight_decay: its penalty,
        1e-4 by default), its confidence calibrated by cross-validation; trained from one labelled photo per
        class. The accuracy reported is byol.probe.estimate's: the stratified cross-validation's accuracy and
        the mean confidence on the photos still unlabelled, the higher of the two, with a range.
        """
        from byol.probe import estimate, fit_page

        t0 = time.perf_counter()
        progress(TRAIN_READING, "reading labels")
        ids, y, names = self._training_set(store)
        counts = {n: int((y == c).sum()) for c, n in enumerate(names)}
        x = np.asarray(store.get_vectors(ids), np.float32)
        progress(TRAIN_FITTING, f"fitting the probe on {len(ids)} photos and cross-validating it")
        with _torch_threads(1) if len(ids) <= ONE_THREAD_UP_TO else contextlib.nullcontext():
            fitted = fit_page(x, y, len(names), 1e-4 if weight_decay is None else weight_decay)
        version = self._save(store, fitted.probe, names, counts)
        predicted = self.predict(store, progress=_within(progress, *TRAIN_PREDICTING))
        reported = estimate(fitted.cv, self.labels.mean_confidence(ids))
        accuracy = None if reported is None else reported[0]
        self.labels.write(lambda db: db.execute("UPDATE probes SET accuracy = ? WHERE version = ?",
                                                (accuracy, version)))
        return ProbeReport(version, names, counts, accuracy, predicted, time.perf_counter() - t0,
                           None if reported is None else (reported[1], reported[2]))

    def _training_set(self, store: Store) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(ids, class of each, class names) of the labelled photos still in the index; at least two labels."""
        labelled = self.labels.labelled()
        ids = np.fromiter(labelled, np.int64, len(labelled))
        ids = ids[np.isin(ids, np.asarray(store.all_ids(), np.int64))]
        names = sorted({labelled[int(i)] for i in ids})
        if len(names) < 2:
            raise ValueError("label photos of at least two different labels before training "
                             f"(now: {len(ids)} labelled photo(s), {len(names)} label(s))")
        return ids, np.array([names.index(labelled[int(i)]) for i in ids]), names

    def _save(self, store: Store, probe: LinearProbe, names: list[str], counts: dict[str, int]) -> int:
        """Store a plain probe (features NULL) as the newest; its version."""

        def save(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO probes (at, classes, counts, accuracy, dim, weight, bias, model_sha256, features) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (time.time(), json.dumps(names), json.dumps(counts), None, int(probe.weight.shape[1]),
                 probe.weight.astype(np.float32).tobytes(), probe.bias.astype(np.float32).tobytes(),
                 getattr(store, "model_sha256", None), None))
            assert cur.lastrowid is not None  # set by every INSERT
            return cur.lastrowid

        return self.labels.write(save)


    # ---------------------------------------------------------------- the stored probe
    def last_probe(self) -> tuple[int, list[str], LinearProbe, float | None] | None:
        """(version, classes, LinearProbe, accuracy) of the newest probe, or None."""
        from byol.probe import LinearProbe

        rows = self.labels.query("SELECT version, classes, accuracy, dim, weight, bias FROM probes "
                                 "ORDER BY version DESC LIMIT 1")
        if not rows:
            return None
        version, classes, accuracy, dim, w, b = rows[0]
        classes = json.loads(classes)
        probe = LinearProbe(np.frombuffer(w, np.float32).reshape(len(classes), dim).copy(),
                            np.frombuffer(b, np.float32).copy())
        return version, classes, probe, accuracy

    def needs_graph(self) -> bool:
        """Whether the newest probe predicts through the neighbour graph: one fitted on neighbour-averaged
        embeddings (a labels file from before the probe became plain logistic regression)."""
        rows = self.labels.query("SELECT features FROM probes ORDER BY version DESC LIMIT 1")
        return bool(rows) and rows[0][0] == "neighbours"

    def prepare(self, store: Store, progress: Progress = no_progress) -> None:
        """Find the index's neighbour graph (kept until the index changes) when the newest probe needs it
        (`needs_graph`), so that its first prediction does not wait for it; nothing otherwise."""
        if self.needs_graph():
            self._graphs.get(store, progress)

    # ---------------------------------------------------------------- predicting
    def predict(self, store: Store, chunk: int = 65536, progress: Progress = no_progress) -> int:
        """Predict every photo in the index with the newest probe; replaces all earlier predictions."""
        last = self.last_probe()
        if last is None:
            raise ValueError("no probe yet: label photos of two labels and train first")
        version, classes, probe, _ = last
        trained_on, features = self.labels.query("SELECT model_sha256, features FROM probes WHERE version = ?",
                                                 (version,))[0]
        if probe.weight.shape[1] != int(store.dim) or trained_on != getattr(store, "model_sha256", None):
            raise ValueError("the index was re-embedded with another encoder since the probe was trained: "
                             "press Train to fit a probe on the new embeddings (your labels are kept)")
        averaged = None
        if features == "neighbours":  # a probe trained before: each photo's probabilities are its neighbours'
            all_ids, nc = self._graphs.get(store, _within(progress, 0.0, PREDICT_GRAPH))
            averaged = nc.predict_proba(probe)  # n, C
        else:
            all_ids = np.asarray(store.all_ids(), np.int64)
        def rows() -> Iterator[tuple[int, str, float, float, int]]:  # chunk by chunk: memory bounded at any size
            for start in range(0, len(all_ids), chunk):
                ids = all_ids[start : start + chunk]
                p = (averaged[start : start + chunk] if averaged is not None
                     else probe.predict_proba(store.get_vectors(ids)))  # n, C
                yield from _rows(ids, p, classes, version)
                done = start + len(ids)
                progress(min(1.0, done / max(1, len(all_ids))) * PREDICT_ROWS, f"predicted {done} photos")
            progress(PREDICT_SAVING, "saving predictions")

        self.labels.replace_predictions(rows())
        return len(all_ids)

    # ---------------------------------------------------------------- using the predictions
    def label_next(self, n: int = 24) -> list[Prediction]:
        """Unlabelled photos the probe is least sure about (smallest margin between its top two labels).

        Margin sampling (Scheffer et al. 2001): labelling these moves the decision boundary most.
        """
        q = ("SELECT p.image_id, p.label, p.confidence, p.margin FROM predictions p "
             "LEFT JOIN labels l ON l.image_id = p.image_id WHERE l.image_id IS NULL ORDER BY p.margin ASC LIMIT ?")
        return [Prediction(*r) for r in self.labels.query(q, (int(n),))]

    def accept(self, min_confidence: float | None = None, ids: Iterable[int] | None = None) -> int:
        """Turn predictions into labels (source 'accepted'): all at or above a confidence, or those of `ids`.

        Photos a person already labelled keep their label.
        """
        if (min_confidence is None) == (ids is None):
            raise ValueError("accept needs either a minimum confidence or a list of ids")
        now = time.time()
        base = ("INSERT INTO labels (image_id, label, source, at) SELECT p.image_id, p.label, 'accepted', ? "
                "FROM predictions p LEFT JOIN labels l ON l.image_id = p.image_id WHERE l.image_id IS NULL AND ")

        def go(db: sqlite3.Connection) -> int:
            if ids is None:
                assert min_confidence is not None  # checked above: one of the two is given
                return db.execute(base + "p.confidence >= ?", (now, float(min_confidence))).rowcount
            n = 0
            for i in ids:
                n += db.execute(base + "p.image_id = ?", (now, int(i))).rowcount
            return n

        self.labels.sync()
        n = int(self.labels.write(go))
        self.labels.fill_identity()
        return n


def _rows(ids: np.ndarray, p: np.ndarray, classes: list[str], version: int) -> list[tuple[int, str, float, float, int]]:
    """(image_id, label, confidence, margin, version) of each photo from its probabilities p (n, C)."""
    top2 = -np.partition(-p, 1, axis=1)[:, :2] if p.shape[1] > 1 else np.c_[p, np.zeros(len(p))]
    best = p.argmax(1)
    return list(zip(ids.tolist(), [classes[c] for c in best], top2[:, 0].tolist(),
                    (top2[:, 0] - top2[:, 1]).tolist(), [version] * len(ids), strict=True))
