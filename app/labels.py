"""Labels in SQLite next to the index, and the linear probe that labels the rest (exports: app/exports.py).

INDEX_DIR/labels.sqlite holds
  label_names(name, at)                                   the label vocabulary
  labels(image_id, sha256, path, label, source, at)       one label per photo; source 'human' or 'accepted'
  predictions(image_id, label, confidence, margin, probe_version)   the probe's guess for every photo
  probes(version, at, classes, counts, accuracy, dim, weight, bias, model_sha256, features)
                                                          every probe trained (newest last), on which encoder
                                                          and on which features (plain or neighbour-averaged)
  synced(key, value)                                      the index (created_at, generation) labels last matched

A label follows its PHOTO, not an id: it holds the photo's content hash (sha256) and path beside the id it
has in the index now. Whenever the index has changed (a new generation, or a new index: created_at differs),
every label is checked against it (`_sync`): a label stays on its id while that row still holds the same
content or path (an edited photo keeps its path, a moved one its content), and otherwise moves to the row
with its content (preferring the same path), then to the row with its path; with neither, it is kept but
detached (image_id NULL) until the photo returns. So labels survive updates, `--rebuild`, and an index
deleted and built again, and never attach to another photo. Labels files written before hashes were kept
are migrated on opening: their ids are trusted only when the label is younger than the index.
The probe is logistic regression on the embeddings (byol.probe.fit_page), its confidence calibrated by
cross-validation, trained from as few as one labelled photo per class; its weights and bias are stored as a
LinearProbe's. On folders shaped like real ones the classifier that averaged over each photo's neighbours
lost to it on some folders and label counts (BENCHMARKS.md), so it is no longer trained; a probe stored by it
(features 'neighbours') still predicts over the index's neighbour graph (index/neighbours.py).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from app.csvfile import FORMULA_STARTS
from index import database

if TYPE_CHECKING:
    from byol.probe import LinearProbe
    from index.store import Store

_T = TypeVar("_T")

LABELS_FILE = "labels.sqlite"
SOURCES = ("human", "accepted")  # 'accepted': a prediction a person accepted in bulk
_SCHEMA = """
CREATE TABLE IF NOT EXISTS label_names (name TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS labels (
  image_id INTEGER UNIQUE,  -- the photo's id in the index now; NULL while the photo is not in the index
  sha256 TEXT,  -- the photo's content: what the label follows
  path,  -- its path (index.database.db_path: text, or the bytes of a name that is not UTF-8): the fallback
  label TEXT NOT NULL REFERENCES label_names(name) ON UPDATE CASCADE ON DELETE CASCADE,
  source TEXT NOT NULL DEFAULT 'human',
  at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS synced (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS predictions (
  image_id INTEGER PRIMARY KEY,
  label TEXT NOT NULL REFERENCES label_names(name) ON UPDATE CASCADE ON DELETE CASCADE,
  confidence REAL NOT NULL,
  margin REAL NOT NULL,
  probe_version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS probes (
  version INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, classes TEXT NOT NULL, counts TEXT NOT NULL,
  accuracy REAL, dim INTEGER NOT NULL, weight BLOB NOT NULL, bias BLOB NOT NULL, model_sha256 TEXT,
  features TEXT);  -- 'neighbours': fitted on neighbour-averaged embeddings (byol/neighbours.py); NULL: plain
"""

_INDEXES = ("CREATE INDEX IF NOT EXISTS predictions_margin ON predictions(margin)",
            "CREATE INDEX IF NOT EXISTS predictions_label ON predictions(label, confidence)")
_MIGRATE_V1 = """
ALTER TABLE labels RENAME TO labels_v1;
CREATE TABLE labels (
  image_id INTEGER UNIQUE, sha256 TEXT, path,
  label TEXT NOT NULL REFERENCES label_names(name) ON UPDATE CASCADE ON DELETE CASCADE,
  source TEXT NOT NULL DEFAULT 'human', at REAL NOT NULL);
INSERT INTO labels (image_id, label, source, at) SELECT image_id, label, source, at FROM labels_v1;
DROP TABLE labels_v1;
"""
_ATTACHED = "image_id IS NOT NULL"
Progress = Callable[[float, str], None]


def no_progress(fraction: float, desc: str) -> None:
    pass


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch on n threads inside the block. A probe on a few hundred labels is hundreds of tiny ops:
    a second thread only adds hand-offs, which cost 8x on a busy 2-core machine (measured: 8 s against 1 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# What check_label_name allows, for the page to show beside the name box (each refusal names its own part)
LABEL_RULE = ("up to 64 letters, digits, spaces and punctuation; none of / \\ : * ? \" < > |, "
              "and not starting with a dot or with = + - @")


def check_label_name(name: str) -> str:
    """The name, stripped, or a ValueError saying which part of LABEL_RULE it breaks. A label becomes a folder
    name in the ImageFolder export, and a cell of the CSV export, so it must be a safe one for both."""
    name = (name or "").strip()
    if not name:
        raise ValueError("a label needs a name")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for c in name):
        raise ValueError(f"label {name[:20]!r}: no line breaks, tabs or other control characters; "
                         "letters, digits, spaces and punctuation are fine")
    if len(name) > 64:
        raise ValueError(f"label {name[:20]!r}...: at most 64 characters")
    if name.startswith(FORMULA_STARTS):
        raise ValueError(f"label {name!r}: a label may not start with = + - or @, which make a spreadsheet run "
                         "the CSV export's cell as a formula; start it with a letter or a digit")
    if name in (".", "..") or name.startswith(".") or any(c in name for c in '/\\:*?"<>|\0'):
        raise ValueError(f"label {name!r}: no leading dot and none of / \\ : * ? \" < > |")
    return name


@dataclass
class Prediction:
    id: int
    label: str
    confidence: float  # the probe's top probability
    margin: float  # top probability minus the runner-up's: small means the probe hesitates


@dataclass
class ProbeReport:
    version: int  # probes.version of the probe that made the predictions
    classes: list[str]  # label names, in the probe's class order
    counts: dict[str, int]  # labelled photos per class used for training
    accuracy: float | None  # estimated accuracy on the unlabelled photos (byol.probe.estimate); None: too few labels
    predicted: int  # photos given a prediction
    seconds: float  # wall time of fit + estimate + predict + save
    accuracy_range: tuple[float, float] | None = None  # (low, high) around the estimate


class Labels:
    """The label database of one index. Thread-safe: the page calls it from several worker threads."""

    def __init__(self, index_dir: str | Path):
        self.path = Path(index_dir) / LABELS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        if "sha256" not in {r[1] for r in self._db.execute("PRAGMA table_info(labels)")}:
            self._db.executescript("BEGIN IMMEDIATE;" + _MIGRATE_V1 + "COMMIT;")  # labels keyed by id alone
        if "features" not in {r[1] for r in self._db.execute("PRAGMA table_info(probes)")}:
            self._db.execute("ALTER TABLE probes ADD COLUMN features TEXT")  # probes before it: plain
        for q in _INDEXES:
            self._db.execute(q)
        from index.neighbours import GraphCache
        from index.rows import Rows

        self._graphs = GraphCache()  # the index's neighbour graph, found once per version of the index

        self._rows = Rows(index_dir)
        self._synced: tuple[float, int] | None = None

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._rows.close()

    # ---------------------------------------------------------------- following photos
    def _sync(self) -> None:
        """Match every label with the index as it is now, when it changed since the last match (module doc)."""
        from index.database import db_path, path_from_db

        with self._lock:
            state = self._rows.state()
            if state is None or state == self._synced:
                return
            with self._rows.snapshot() as rows:
                state = rows.state()
                if state is None:
                    return
                created_at, _ = state
                labels = self._db.execute("SELECT rowid, image_id, sha256, path, at FROM labels").fetchall()
                now = rows.by_id(r[1] for r in labels if r[1] is not None)
                keep, lost, todo = {}, [], []
                for rowid, image_id, sha, path, at in labels:
                    path = None if path is None else path_from_db(path)
                    row = now.get(image_id)
                    if sha is None and path is None:  # labelled before hashes were kept (or without an index)
                        if image_id is None:
                            continue
                        if at < created_at:  # older than the index: the id meant a photo of an index since gone
                            lost.append(rowid)
                        elif row is not None:
                            keep[rowid] = (image_id, row[0], row[1])
                        continue
                    if row is not None and (row[0] == sha or row[1] == path):
                        keep[rowid] = (image_id, row[0], row[1])  # the same photo, maybe edited or moved
                    else:
                        todo.append((rowid, sha, path))
                by_hash, by_path = rows.ids_of([t[1] for t in todo if t[1]], [t[2] for t in todo if t[2]])
                taken = {v[0] for v in keep.values()}
                moved = {}
                for rowid, sha, path in todo:
                    found = [c for c in by_hash.get(sha, []) if c[0] not in taken]
                    found.sort(key=lambda c: c[1] != path)  # the same content at the same path first
                    if found:
                        moved[rowid] = (found[0][0], sha, found[0][1])
                    elif path is not None and by_path.get(path) is not None and by_path[path] not in taken:
                        moved[rowid] = (by_path[path], sha, path)
                    else:
                        continue
                    taken.add(moved[rowid][0])

            def go(db: sqlite3.Connection) -> None:
                if self._synced_index(db) not in (None, created_at):
                    db.execute("DELETE FROM predictions")  # a new index: its ids mean other photos
                # detach first, so that ids can move between labels without clashing; lost ones stay detached
                for rowid in [t[0] for t in todo] + lost:
                    db.execute("UPDATE labels SET image_id = NULL WHERE rowid = ?", (rowid,))
                for rowid, (image_id, sha, path) in {**keep, **moved}.items():
                    db.execute("UPDATE labels SET image_id = ?, sha256 = ?, path = ? WHERE rowid = ?",
                               (image_id, sha, None if path is None else db_path(path), rowid))
                db.execute("INSERT OR REPLACE INTO synced VALUES ('created_at', ?)", (repr(created_at),))

            self._write(go)
            self._synced = state

    @staticmethod
    def _synced_index(db: sqlite3.Connection) -> float | None:
        row = db.execute("SELECT value FROM synced WHERE key = 'created_at'").fetchone()
        return None if row is None else float(row[0])

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run fn inside one transaction: all of it lands or none of it (index/database.py transaction)."""
        with self._lock, database.transaction(self._db):
            return fn(self._db)

    # ---------------------------------------------------------------- vocabulary
    def names(self) -> list[str]:
        return [r[0] for r in self._query("SELECT name FROM label_names ORDER BY name")]

    def create(self, name: str) -> str:
        name = check_label_name(name)
        self._write(lambda db: db.execute("INSERT OR IGNORE INTO label_names VALUES (?, ?)", (name, time.time())))
        return name

    def rename(self, old: str, new: str) -> str:
        new = check_label_name(new)
        if old not in self.names():
            raise ValueError(f"no label named {old!r}")
        if new in self.names() and new != old:
            raise ValueError(f"a label named {new!r} already exists")

        def go(db: sqlite3.Connection) -> None:
            db.execute("UPDATE label_names SET name = ? WHERE name = ?", (new, old))  # cascades to both tables
            for version, classes in db.execute("SELECT version, classes FROM probes").fetchall():
                names = [new if c == old else c for c in json.loads(classes)]
                db.execute("UPDATE probes SET classes = ? WHERE version = ?", (json.dumps(names), version))

        self._write(go)
        return new

    def delete(self, name: str) -> None:
        """Remove a label, its assignments and the predictions of it."""
        self._write(lambda db: db.execute("DELETE FROM label_names WHERE name = ?", (name,)))

    # ---------------------------------------------------------------- assignments
    def assign(self, ids: Iterable[int], label: str, source: str = "human") -> int:
        """Label photos (replacing any label they had); creates the label if it is new."""
        from index.database import db_path

        ids = [int(i) for i in ids]
        label = self.create(label)
        now = time.time()
        self._sync()
        photo = self._rows.by_id(ids)  # what each id shows now: the label follows that photo
        rows = [(i, *((photo[i][0], db_path(photo[i][1])) if i in photo else (None, None)), label, source, now)
                for i in ids]
        self._write(lambda db: db.executemany(
            "INSERT OR REPLACE INTO labels (image_id, sha256, path, label, source, at) VALUES (?, ?, ?, ?, ?, ?)",
            rows))
        return len(ids)

    def unassign(self, ids: Iterable[int]) -> int:
        rows = [(int(i),) for i in ids]
        self._write(lambda db: db.executemany("DELETE FROM labels WHERE image_id = ?", rows))
        return len(rows)

    def labelled(self, source: str | None = None) -> dict[int, str]:
        """{image id: label}, all sources or one (labels of photos now in the index)."""
        self._sync()
        if source is None:
            rows = self._query(f"SELECT image_id, label FROM labels WHERE {_ATTACHED}")
        else:
            rows = self._query(f"SELECT image_id, label FROM labels WHERE {_ATTACHED} AND source = ?", (source,))
        return dict(rows)

    def labels_of(self, ids: Iterable[int]) -> dict[int, tuple[str, str]]:
        """{id: (label, source)} for those of ids that have a label."""
        ids = [int(i) for i in ids]
        out: dict[int, tuple[str, str]] = {}
        self._sync()
        q = "SELECT image_id, label, source FROM labels WHERE image_id IN ({})"
        with self._lock:
            out.update({r[0]: (r[1], r[2]) for r in database.select_in(self._db, q, ids)})
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """{label: {'human': n, 'accepted': n, 'predicted': n}} for every label, zeros included."""
        out = {n: {"human": 0, "accepted": 0, "predicted": 0} for n in self.names()}
        self._sync()
        q = f"SELECT label, source, COUNT(*) FROM labels WHERE {_ATTACHED} GROUP BY label, source"
        for label, source, n in self._query(q):
            out[label][source] = n
        for label, n in self._query("SELECT label, COUNT(*) FROM predictions GROUP BY label"):
            out[label]["predicted"] = n
        return out

    # ---------------------------------------------------------------- the probe
    def train(self, store: Store, weight_decay: float | None = None, progress: Progress = no_progress) -> ProbeReport:
        """Fit the probe on every labelled photo still in the index, predict all, estimate its accuracy.

        The probe is logistic regression on the embeddings (byol.probe.fit_page; weight_decay: its penalty,
        1e-4 by default), its confidence calibrated by cross-validation; trained from one labelled photo per
        class. The accuracy reported is byol.probe.estimate's: the stratified cross-validation's accuracy and
        the mean confidence on the photos still unlabelled, averaged, with a range.
        """
        from byol.probe import estimate, fit_page

        t0 = time.perf_counter()
        progress(0.0, "reading labels")
        labelled = self.labelled()
        ids = np.fromiter(labelled, np.int64, len(labelled))
        ids = ids[np.isin(ids, np.asarray(store.all_ids(), np.int64))]
        names = sorted({labelled[int(i)] for i in ids})
        if len(names) < 2:
            raise ValueError("label photos of at least two different labels before training "
                             f"(now: {len(ids)} labelled photo(s), {len(names)} label(s))")
        y = np.array([names.index(labelled[int(i)]) for i in ids])
        counts = {n: int((y == c).sum()) for c, n in enumerate(names)}
        x = np.asarray(store.get_vectors(ids), np.float32)
        progress(0.1, f"fitting the probe on {len(ids)} photos and cross-validating it")
        with _torch_threads(1) if len(ids) <= 20000 else contextlib.nullcontext():
            fitted = fit_page(x, y, len(names), 1e-4 if weight_decay is None else weight_decay)
        probe = fitted.probe

        def save(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO probes (at, classes, counts, accuracy, dim, weight, bias, model_sha256, features) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (time.time(), json.dumps(names), json.dumps(counts), None, int(probe.weight.shape[1]),
                 probe.weight.astype(np.float32).tobytes(), probe.bias.astype(np.float32).tobytes(),
                 getattr(store, "model_sha256", None), None))
            assert cur.lastrowid is not None  # set by every INSERT
            return cur.lastrowid

        version = self._write(save)
        predicted = self.predict(store, progress=lambda f, d: progress(0.3 + 0.6 * f, d))
        reported = estimate(fitted.cv, self._unlabelled_confidence(ids))
        accuracy = None if reported is None else reported[0]
        self._write(lambda db: db.execute("UPDATE probes SET accuracy = ? WHERE version = ?", (accuracy, version)))
        return ProbeReport(version, names, counts, accuracy, predicted, time.perf_counter() - t0,
                           None if reported is None else (reported[1], reported[2]))

    def _unlabelled_confidence(self, labelled_ids: np.ndarray) -> float:
        """The mean confidence of the predictions of the photos not among `labelled_ids` (0 with none)."""
        rows = np.asarray(self._query("SELECT image_id, confidence FROM predictions"), np.float64).reshape(-1, 2)
        rest = rows[~np.isin(rows[:, 0].astype(np.int64), labelled_ids), 1]
        return float(rest.mean()) if len(rest) else 0.0

    def prepare(self, store: Store, progress: Progress = no_progress) -> None:
        """Find the index's neighbour graph (kept until the index changes): a probe fitted on neighbour-averaged
        embeddings (a labels file from before the probe became plain logistic regression) predicts with it.
        Training no longer needs it."""
        self._graphs.get(store, progress)

    def last_probe(self) -> tuple[int, list[str], LinearProbe, float | None] | None:
        """(version, classes, LinearProbe, accuracy) of the newest probe, or None."""
        from byol.probe import LinearProbe

        rows = self._query("SELECT version, classes, accuracy, dim, weight, bias FROM probes "
                           "ORDER BY version DESC LIMIT 1")
        if not rows:
            return None
        version, classes, accuracy, dim, w, b = rows[0]
        classes = json.loads(classes)
        probe = LinearProbe(np.frombuffer(w, np.float32).reshape(len(classes), dim).copy(),
                            np.frombuffer(b, np.float32).copy())
        return version, classes, probe, accuracy

    def predict(self, store: Store, chunk: int = 65536, progress: Progress = no_progress) -> int:
        """Predict every photo in the index with the newest probe; replaces all earlier predictions."""
        last = self.last_probe()
        if last is None:
            raise ValueError("no probe yet: label photos of two labels and train first")
        version, classes, probe, _ = last
        trained_on = self._query("SELECT model_sha256 FROM probes WHERE version = ?", (version,))[0][0]
        if probe.weight.shape[1] != int(store.dim) or trained_on != getattr(store, "model_sha256", None):
            raise ValueError("the index was re-embedded with another encoder since the probe was trained: "
                             "press Train to fit a probe on the new embeddings (your labels are kept)")
        features = self._query("SELECT features FROM probes WHERE version = ?", (version,))[0][0]
        averaged = None
        if features == "neighbours":  # a probe trained before: each photo's probabilities are its neighbours'
            all_ids, nc = self._graphs.get(store, lambda f, d: progress(0.3 * f, d))
            averaged = nc.predict_proba(probe)  # n, C
        else:
            all_ids = np.asarray(store.all_ids(), np.int64)
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(all_ids), chunk):
            ids = all_ids[start : start + chunk]
            p = (averaged[start : start + chunk] if averaged is not None
                 else probe.predict_proba(store.get_vectors(ids)))  # n, C
            top2 = -np.partition(-p, 1, axis=1)[:, :2] if p.shape[1] > 1 else np.c_[p, np.zeros(len(p))]
            best = p.argmax(1)
            rows.extend(zip(ids.tolist(), [classes[c] for c in best], top2[:, 0].tolist(),
                            (top2[:, 0] - top2[:, 1]).tolist(), [version] * len(ids)))
            progress(min(1.0, (start + len(ids)) / max(1, len(all_ids))) * 0.8, f"predicted {start + len(ids)} photos")
        progress(0.9, "saving predictions")

        def save(db: sqlite3.Connection) -> None:
            # replacing every row: dropping the indexes and building them after the insert halves the time
            db.execute("DROP INDEX IF EXISTS predictions_margin")
            db.execute("DROP INDEX IF EXISTS predictions_label")
            db.execute("DELETE FROM predictions")
            db.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?)", rows)
            for q in _INDEXES:
                db.execute(q)

        self._write(save)
        return len(rows)

    def predictions(self, ids: Iterable[int]) -> dict[int, Prediction]:
        ids = [int(i) for i in ids]
        self._sync()
        out: dict[int, Prediction] = {}
        q = "SELECT image_id, label, confidence, margin FROM predictions WHERE image_id IN ({})"
        with self._lock:
            out.update({r[0]: Prediction(*r) for r in database.select_in(self._db, q, ids)})
        return out

    def all_predictions(self) -> dict[int, str]:
        self._sync()
        return dict(self._query("SELECT image_id, label FROM predictions"))

    def browse(self, label: str, predicted: bool = True, most_confident: bool = True,
               limit: int = 48, offset: int = 0) -> list[Prediction]:
        """Photos predicted as `label` (not yet labelled), or labelled `label`, ordered by confidence."""
        order = "DESC" if most_confident else "ASC"
        self._sync()
        if predicted:
            q = ("SELECT p.image_id, p.label, p.confidence, p.margin FROM predictions p "
                 "LEFT JOIN labels l ON l.image_id = p.image_id WHERE l.image_id IS NULL AND p.label = ? "
                 f"ORDER BY p.confidence {order} LIMIT ? OFFSET ?")
        else:
            q = ("SELECT l.image_id, l.label, COALESCE(p.confidence, 1.0), COALESCE(p.margin, 1.0) FROM labels l "
                 "LEFT JOIN predictions p ON p.image_id = l.image_id WHERE l.image_id IS NOT NULL AND l.label = ? "
                 f"ORDER BY COALESCE(p.confidence, 1.0) {order}, l.at DESC LIMIT ? OFFSET ?")
        return [Prediction(*r) for r in self._query(q, (label, int(limit), int(offset)))]

    def label_next(self, n: int = 24) -> list[Prediction]:
        """Unlabelled photos the probe is least sure about (smallest margin between its top two labels).

        Margin sampling (Scheffer et al. 2001): labelling these moves the decision boundary most.
        """
        q = ("SELECT p.image_id, p.label, p.confidence, p.margin FROM predictions p "
             "LEFT JOIN labels l ON l.image_id = p.image_id WHERE l.image_id IS NULL ORDER BY p.margin ASC LIMIT ?")
        return [Prediction(*r) for r in self._query(q, (int(n),))]

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

        self._sync()
        n = int(self._write(go))
        self._fill_identity()
        return n

    def _fill_identity(self) -> None:
        """Give labels made from ids alone (accepted predictions) the content and path of their photo."""
        from index.database import db_path

        with self._lock:
            ids = [r[0] for r in self._query(f"SELECT image_id FROM labels WHERE {_ATTACHED} "
                                             "AND sha256 IS NULL AND path IS NULL")]
            photo = self._rows.by_id(ids)
            if photo:
                self._write(lambda db: db.executemany(
                    "UPDATE labels SET sha256 = ?, path = ? WHERE image_id = ?",
                    [(h, db_path(p), i) for i, (h, p, _) in photo.items()]))

    # ---------------------------------------------------------------- the rows every export writes
    def table(self, store: Store, include_predictions: bool = True, min_confidence: float = 0.0) -> list[dict[str, Any]]:
        """One dict per photo in the index: id, path, label, source, predicted, confidence.

        `label` is the photo's label, or (include_predictions) its prediction at or above min_confidence
        with source 'predicted'; empty when it has neither.
        """
        ids = [int(i) for i in store.all_ids()]
        self._sync()
        labelled = {r[0]: (r[1], r[2]) for r in self._query(f"SELECT image_id, label, source FROM labels WHERE {_ATTACHED}")}
        preds = {r[0]: (r[1], r[2]) for r in self._query("SELECT image_id, label, confidence FROM predictions")}
        out = []
        for start in range(0, len(ids), 10000):
            for row in store.rows(ids[start : start + 10000]):
                i = int(row["id"])
                label, source = labelled.get(i, ("", ""))
                pred, conf = preds.get(i, ("", None))
                if not label and include_predictions and pred and conf >= min_confidence:
                    label, source = pred, "predicted"
                out.append({"id": i, "path": str(row["path"]), "label": label, "source": source,
                            "predicted": pred, "confidence": "" if conf is None else round(conf, 4)})
        return out
