"""index/database.py: transactions that land whole or not at all, IN (...) over any number of values, snapshots,
paths that round-trip; and the small rooms beside the store (dropped vectors, thumbnails, the manifest)."""

from __future__ import annotations

import os
import sqlite3
import time

import numpy as np
import pytest

from app.review import Decisions
from index import database, manifest
from index.dropped import Dropped
from index.thumbs import Thumbnails


@pytest.fixture
def conn(tmp_path):
    c = database.connect(tmp_path / "t.sqlite", wal=True)
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    # the oldest variable limit a user's SQLite may have: a query of more values than this fails
    c.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    yield c
    c.close()


def test_a_transaction_lands_whole_or_not_at_all(conn):
    with database.transaction(conn):
        conn.execute("INSERT INTO t VALUES (1, 'a')")
    with pytest.raises(ZeroDivisionError):
        with database.transaction(conn):
            conn.execute("INSERT INTO t VALUES (2, 'b')")
            raise ZeroDivisionError
    assert not conn.in_transaction and [r[0] for r in conn.execute("SELECT id FROM t")] == [1]
    with database.transaction(conn):  # the connection is usable again
        conn.execute("INSERT INTO t VALUES (3, 'c')")
    assert [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")] == [1, 3]


def test_a_commit_that_fails_is_rolled_back(tmp_path):
    c = database.connect(tmp_path / "fk.sqlite")
    c.execute("PRAGMA foreign_keys=ON")
    c.executescript("CREATE TABLE p (id INTEGER PRIMARY KEY);"
                    "CREATE TABLE k (p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED);")
    with pytest.raises(sqlite3.IntegrityError):
        with database.transaction(c):
            c.execute("INSERT INTO k VALUES (42)")  # checked only at COMMIT, which then fails
    assert not c.in_transaction and c.execute("SELECT count(*) FROM k").fetchone()[0] == 0
    with database.transaction(c):
        c.execute("INSERT INTO p VALUES (1)")
    assert c.execute("SELECT count(*) FROM p").fetchone()[0] == 1
    c.close()


def test_in_queries_take_more_values_than_sqlite_allows_in_one(conn):
    with database.transaction(conn):
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, str(i)) for i in range(3000)])
    ids = list(range(0, 3000, 1)) + [10_000]  # one that is not there
    with pytest.raises(sqlite3.OperationalError):  # what the batching is for
        conn.execute(f"SELECT id FROM t WHERE id IN ({','.join('?' * len(ids))})", ids)
    got = database.select_in(conn, "SELECT id, v FROM t WHERE id IN ({})", ids)
    assert sorted(r[0] for r in got) == list(range(3000)) and all(r[1] == str(r[0]) for r in got)
    assert database.select_in(conn, "SELECT id FROM t WHERE id IN ({})", []) == []
    with database.transaction(conn):
        database.execute_in(conn, "DELETE FROM t WHERE id IN ({})", list(range(1, 3000, 2)))
    assert [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")] == list(range(0, 3000, 2))
    assert [list(c) for c in database.chunks([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]


def test_a_snapshot_sees_one_state_while_another_connection_writes(tmp_path, conn):
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    other = database.connect(tmp_path / "t.sqlite")
    with database.snapshot(conn):
        before = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        other.execute("INSERT INTO t VALUES (2, 'b')")  # commits at once (no transaction of its own)
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == before == 1
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    conn.execute("BEGIN IMMEDIATE")  # a writer's open transaction already is a snapshot: left open
    with database.snapshot(conn):
        conn.execute("INSERT INTO t VALUES (3, 'c')")
    assert conn.in_transaction
    conn.execute("ROLLBACK")
    other.close()


def test_any_file_name_round_trips(tmp_path, conn):
    odd = str(tmp_path / os.fsdecode(b"caf\xe9.jpg"))  # not UTF-8: a lone surrogate in Python
    plain = str(tmp_path / "café.jpg")
    assert isinstance(database.db_path(odd), bytes) and database.db_path(plain) == plain
    conn.execute("CREATE TABLE f (path UNIQUE)")
    conn.executemany("INSERT INTO f VALUES (?)", [(database.db_path(odd),), (database.db_path(plain),)])
    back = {database.path_from_db(p) for (p,) in conn.execute("SELECT path FROM f")}
    assert back == {odd, plain}


def test_review_clear_is_one_transaction(tmp_path):
    """A clear that fails part-way leaves every decision as it was, and the database writable."""
    dec = Decisions(tmp_path)
    other = sqlite3.connect(tmp_path / "review.sqlite")  # two decisions, as set() records them
    other.executemany("INSERT INTO decisions VALUES (?, ?, ?, ?)", [(1, "a" * 64, "keep", 0.0), (2, "b" * 64, "drop", 0.0)])
    other.execute("CREATE TRIGGER refuse BEFORE DELETE ON decisions WHEN old.image_id = 2 "
                  "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    other.commit()
    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        dec.clear([1, 2])  # 1 is deleted, then 2 fails
    assert other.execute("SELECT image_id FROM decisions ORDER BY image_id").fetchall() == [(1,), (2,)]
    other.execute("DROP TRIGGER refuse")
    other.commit()
    dec.clear([1])  # not stuck inside the failed transaction
    assert other.execute("SELECT image_id FROM decisions").fetchall() == [(2,)]
    other.close()
    dec.close()


def test_dropped_vectors_are_kept_for_a_while_and_a_later_refresh_wins():
    d = Dropped(kept_s=60.0)
    assert d.vectors(np.array([1])) is None
    d.keep(np.array([1, 2]), np.array([[1.0, 0.0], [0.0, 1.0]], np.float32))
    d.keep(np.array([2]), np.array([[0.5, 0.25]], np.float32))
    np.testing.assert_array_equal(d.vectors(np.array([2, 1])), [[0.5, 0.25], [1.0, 0.0]])  # copies, exactly
    assert d.vectors(np.array([1, 3])) is None  # 3 was never dropped: no answer for the request
    assert d.vectors(np.array([], np.int64)).shape == (0, 2)
    short = Dropped(kept_s=0.0)
    short.keep(np.array([5]), np.array([[1.0, 0.0]], np.float32))
    time.sleep(0.01)
    short.keep(np.array([], np.int64), None)  # the next refresh forgets what was kept long enough
    assert short.vectors(np.array([5])) is None


def test_thumbnails_live_a_thousand_to_a_folder(tmp_path):
    th = Thumbnails(tmp_path)
    assert th.path(1234) == tmp_path / "thumbs" / "1" / "1234.jpg" and th.path(7).parent.name == "0"
    p = th.put(1234, b"\xff\xd8jpeg bytes made in a decode thread")
    assert p.read_bytes().startswith(b"\xff\xd8")
    th.remove([1234, 99])  # one missing already: fine
    assert not p.exists()


def test_the_manifest_generation_is_minus_one_when_unreadable(tmp_path):
    assert manifest.generation(tmp_path) == -1
    (tmp_path / "manifest.json").write_text("{not json")
    assert manifest.generation(tmp_path) == -1
    (tmp_path / "manifest.json").write_text('{"generation": 7}')
    assert manifest.generation(tmp_path) == 7
