"""The label database of one index: the vocabulary, which photo has which label, the probe's predictions
stored beside them, browsing them, and the rows every export writes (app/exports.py). The probe that
fills the predictions is app/probe.py.

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
every label is checked against it (`sync`): a label stays on its id while that row still holds the same
content or path (an edited photo keeps its path, a moved one its content), and otherwise moves to the row
with its content (preferring the same path), then to the row with its path; with neither, it is kept but
detached (image_id NULL) until the photo returns. So labels survive updates, `--rebuild`, and an index
deleted and built again, and never attach to another photo. Labels files written before hashes were kept
are migrated on opening (`open_database`): their ids are trusted only when the label is younger than the index.
"""

from __future__ import annotations

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

_PREDICTION_INDEXES = ("CREATE INDEX IF NOT EXISTS predictions_margin ON predictions(margin)",
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


def open_database(path: Path) -> sqlite3.Connection:
    """The labels file at `path`, created with the schema above or migrated to it: files from before labels
    kept their photo's hash get the hash and path columns (their ids are then checked by `Labels.sync`), and
    probes from before the `features` column are plain ones."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.executescript(_SCHEMA)
    if "sha256" not in {r[1] for r in db.execute("PRAGMA table_info(labels)")}:
        db.executescript("BEGIN IMMEDIATE;" + _MIGRATE_V1 + "COMMIT;")  # labels keyed by id alone
    if "features" not in {r[1] for r in db.execute("PRAGMA table_info(probes)")}:
        db.execute("ALTER TABLE probes ADD COLUMN features TEXT")  # probes before it: plain
    for q in _PREDICTION_INDEXES:
        db.execute(q)
    return db


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


class Labels:
    """The label database of one index. Thread-safe: the page calls it from several worker threads."""

    def __init__(self, index_dir: str | Path):
        self.path = Path(index_dir) / LABELS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = open_database(self.path)
        from index.rows import Rows

        self._rows = Rows(index_dir)
        self._synced: tuple[float, int] | None = None

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._rows.close()

    # ---------------------------------------------------------------- following photos
    def sync(self) -> None:
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

            self.write(go)
            self._synced = state

    @staticmethod
    def _synced_index(db: sqlite3.Connection) -> float | None:
        row = db.execute("SELECT value FROM synced WHERE key = 'created_at'").fetchone()
        return None if row is None else float(row[0])

    def query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run fn inside one transaction: all of it lands or none of it (index/database.py transaction)."""
        with self._lock, database.transaction(self._db):
            return fn(self._db)

    # ---------------------------------------------------------------- vocabulary
    def names(self) -> list[str]:
        return [r[0] for r in self.query("SELECT name FROM label_names ORDER BY name")]

    def create(self, name: str) -> str:
        name = check_label_name(name)
        self.write(lambda db: db.execute("INSERT OR IGNORE INTO label_names VALUES (?, ?)", (name, time.time())))
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

        self.write(go)
        return new

    def delete(self, name: str) -> None:
        """Remove a label, its assignments and the predictions of it."""
        self.write(lambda db: db.execute("DELETE FROM label_names WHERE name = ?", (name,)))

    # ---------------------------------------------------------------- assignments
    def assign(self, ids: Iterable[int], label: str, source: str = "human") -> int:
        """Label photos (replacing any label they had); creates the label if it is new."""
        from index.database import db_path

        ids = [int(i) for i in ids]
        label = self.create(label)
        now = time.time()
        self.sync()
        photo = self._rows.by_id(ids)  # what each id shows now: the label follows that photo
        rows = [(i, *((photo[i][0], db_path(photo[i][1])) if i in photo else (None, None)), label, source, now)
                for i in ids]
        self.write(lambda db: db.executemany(
            "INSERT OR REPLACE INTO labels (image_id, sha256, path, label, source, at) VALUES (?, ?, ?, ?, ?, ?)",
            rows))
        return len(ids)

    def unassign(self, ids: Iterable[int]) -> int:
        rows = [(int(i),) for i in ids]
        self.write(lambda db: db.executemany("DELETE FROM labels WHERE image_id = ?", rows))
        return len(rows)

    def labelled(self, source: str | None = None) -> dict[int, str]:
        """{image id: label}, all sources or one (labels of photos now in the index)."""
        self.sync()
        if source is None:
            rows = self.query(f"SELECT image_id, label FROM labels WHERE {_ATTACHED}")
        else:
            rows = self.query(f"SELECT image_id, label FROM labels WHERE {_ATTACHED} AND source = ?", (source,))
        return dict(rows)

    def labels_of(self, ids: Iterable[int]) -> dict[int, tuple[str, str]]:
        """{id: (label, source)} for those of ids that have a label."""
        ids = [int(i) for i in ids]
        out: dict[int, tuple[str, str]] = {}
        self.sync()
        q = "SELECT image_id, label, source FROM labels WHERE image_id IN ({})"
        with self._lock:
            out.update({r[0]: (r[1], r[2]) for r in database.select_in(self._db, q, ids)})
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """{label: {'human': n, 'accepted': n, 'predicted': n}} for every label, zeros included."""
        out = {n: {"human": 0, "accepted": 0, "predicted": 0} for n in self.names()}
        self.sync()
        q = f"SELECT label, source, COUNT(*) FROM labels WHERE {_ATTACHED} GROUP BY label, source"
        for label, source, n in self.query(q):
            out[label][source] = n
        for label, n in self.query("SELECT label, COUNT(*) FROM predictions GROUP BY label"):
            out[label]["predicted"] = n
        return out

    # ---------------------------------------------------------------- predictions
    def replace_predictions(self, rows: Iterable[tuple[int, str, float, float, int]]) -> None:
        """Store (image_id, label, confidence, margin, probe_version) rows in place of every earlier prediction
        (an iterable: rows made while they are inserted, in one transaction)."""

        def save(db: sqlite3.Connection) -> None:
            # replacing every row: dropping the indexes and building them after the insert halves the time
            db.execute("DROP INDEX IF EXISTS predictions_margin")
            db.execute("DROP INDEX IF EXISTS predictions_label")
            db.execute("DELETE FROM predictions")
            db.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?)", rows)
            for q in _PREDICTION_INDEXES:
                db.execute(q)

        self.write(save)

    def predictions(self, ids: Iterable[int]) -> dict[int, Prediction]:
        ids = [int(i) for i in ids]
        self.sync()
        out: dict[int, Prediction] = {}
        q = "SELECT image_id, label, confidence, margin FROM predictions WHERE image_id IN ({})"
        with self._lock:
            out.update({r[0]: Prediction(*r) for r in database.select_in(self._db, q, ids)})
        return out

    def mean_confidence(self, excluding: Iterable[int]) -> float:
        """The mean confidence of the predictions of every photo but `excluding` (0 with none), summed in SQLite:
        all the predictions less those of `excluding`, so that no list of every prediction is made."""
        ids = [int(i) for i in excluding]
        self.sync()
        with self._lock:
            ((total, count),) = self._db.execute("SELECT TOTAL(confidence), COUNT(*) FROM predictions").fetchall()
            for t, c in database.select_in(self._db, "SELECT TOTAL(confidence), COUNT(*) FROM predictions "
                                           "WHERE image_id IN ({})", ids):
                total, count = total - t, count - c
        return float(total / count) if count else 0.0

    def predicted_labels(self, ids: Iterable[int]) -> dict[int, str]:
        """{id: predicted label} of those of `ids` that have a prediction."""
        return {i: p.label for i, p in self.predictions(ids).items()}

    def predicted_ids(self, label: str) -> np.ndarray:
        """The ids predicted as `label`, ascending (the predictions' label index)."""
        self.sync()
        return np.sort(np.fromiter((r[0] for r in self.query("SELECT image_id FROM predictions WHERE label = ?",
                                                                (label,))), np.int64))

    def browse(self, label: str, predicted: bool = True, most_confident: bool = True,
               limit: int = 48, offset: int = 0) -> list[Prediction]:
        """Photos predicted as `label` (not yet labelled), or labelled `label`, ordered by confidence."""
        order = "DESC" if most_confident else "ASC"
        self.sync()
        if predicted:
            q = ("SELECT p.image_id, p.label, p.confidence, p.margin FROM predictions p "
                 "LEFT JOIN labels l ON l.image_id = p.image_id WHERE l.image_id IS NULL AND p.label = ? "
                 f"ORDER BY p.confidence {order} LIMIT ? OFFSET ?")
        else:
            q = ("SELECT l.image_id, l.label, COALESCE(p.confidence, 1.0), COALESCE(p.margin, 1.0) FROM labels l "
                 "LEFT JOIN predictions p ON p.image_id = l.image_id WHERE l.image_id IS NOT NULL AND l.label = ? "
                 f"ORDER BY COALESCE(p.confidence, 1.0) {order}, l.at DESC LIMIT ? OFFSET ?")
        return [Prediction(*r) for r in self.query(q, (label, int(limit), int(offset)))]

    def fill_identity(self) -> None:
        """Give labels made from ids alone (accepted predictions) the content and path of their photo."""
        from index.database import db_path

        with self._lock:
            ids = [r[0] for r in self.query(f"SELECT image_id FROM labels WHERE {_ATTACHED} "
                                            "AND sha256 IS NULL AND path IS NULL")]
            photo = self._rows.by_id(ids)
            if photo:
                self.write(lambda db: db.executemany(
                    "UPDATE labels SET sha256 = ?, path = ? WHERE image_id = ?",
                    [(h, db_path(p), i) for i, (h, p, _) in photo.items()]))

    # ---------------------------------------------------------------- the rows every export writes
    def table(self, store: Store, include_predictions: bool = True, min_confidence: float = 0.0,
              chunk: int = 10000) -> Iterator[dict[str, Any]]:
        """One dict per photo in the index, in id order: id, path, label, source, predicted, confidence.

        `label` is the photo's label, or (include_predictions) its prediction at or above min_confidence
        with source 'predicted'; empty when it has neither. Made `chunk` photos at a time (their rows and
        predictions read together), so an export of 10,000,000 photos never holds them all.
        """
        ids = store.all_ids()
        self.sync()
        labelled = {r[0]: (r[1], r[2]) for r in self.query(f"SELECT image_id, label, source FROM labels WHERE {_ATTACHED}")}
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            preds = self.predictions(part)
            for row in store.rows(part):
                i = int(row["id"])
                label, source = labelled.get(i, ("", ""))
                p = preds.get(i)
                pred, conf = (p.label, p.confidence) if p is not None else ("", None)
                if not label and include_predictions and pred and conf is not None and conf >= min_confidence:
                    label, source = pred, "predicted"
                yield {"id": i, "path": str(row["path"]), "label": label, "source": source,
                       "predicted": pred, "confidence": "" if conf is None else round(conf, 4)}
