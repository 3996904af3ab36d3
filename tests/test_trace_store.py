"""The embedded SQLite trace store: what only it has (the file, its permissions, schema
versions, corruption, per-write retention). The behaviour both backends share is in
test_trace_store_contract.py, the processor in test_trace_store_processor.py."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.telemetry import trace_store_sqlite
from gateway.telemetry.trace_store import TraceStoreError
from gateway.telemetry.trace_store_sqlite import SqliteTraceStore
from tests.test_trace_store_support import (
    DAY,
    MS,
    NOW,
    S,
    SpanMaker,
    all_traces,
    oldest_first_traces,
    summary,
    trace_id_of,
)


def open_store(path: Path, *, max_spans: int = 100_000, max_age: float = DAY) -> SqliteTraceStore:
    return SqliteTraceStore.open(path, max_spans=max_spans, max_age_seconds=max_age)


@pytest.fixture
def maker() -> SpanMaker:
    return SpanMaker()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "traces" / "traces.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteTraceStore]:
    s = open_store(db_path)
    yield s
    s.close()


# ---------------------------------------------------------------------------- retention


def test_count_limit_holds_after_every_write(db_path, maker):
    with open_store(db_path, max_spans=10) as store:
        ids, batches = oldest_first_traces(maker)
        # Write order differs from age order: eviction must go by start time.
        for i in (2, 0, 4, 1, 3):
            store.write(batches[i])
            assert store.span_count <= 10

        assert store.span_count == 9
        assert store.evicted == 6
        assert store.written == 15
        assert [t.trace_id for t in all_traces(store)] == ids[:1:-1]
        for tid in ids[:2]:
            assert store.get_trace(tid) == []
        for tid in ids[2:]:
            assert len(store.get_trace(tid)) == 3


def test_write_applies_age_retention(db_path, maker, monkeypatch):
    # Writes check ages at most once a second; make every write due so the test needn't wait.
    monkeypatch.setattr(trace_store_sqlite, "_AGE_CHECK_INTERVAL_NS", 0)
    with open_store(db_path, max_age=3600) as store:
        old = maker.request(start=NOW - 2 * 3600 * S, duration=S)
        new = maker.request(start=NOW - 60 * S, duration=S)
        store.write(old + new)
        assert [t.trace_id for t in all_traces(store)] == [trace_id_of(new[0])]
        assert (store.evicted, store.span_count, store.written) == (2, 2, 4)


def test_reopen_with_lower_limit_applies_retention(db_path, maker):
    with open_store(db_path) as store:
        for i in range(4):
            store.write(maker.request(start=NOW - (10 - i) * S, duration=MS))
    with open_store(db_path, max_spans=5) as store:
        assert store.span_count == 4
        assert store.evicted == 4
        assert len(all_traces(store)) == 2


# ---------------------------------------------------------------------------- file


def test_restart_keeps_traces(db_path, maker):
    spans = maker.request(start=NOW - 5 * S, duration=250 * MS, code="NOT_FOUND", error=True)
    with open_store(db_path) as store:
        store.write(spans)
        before = all_traces(store)
        trace_before = store.get_trace(trace_id_of(spans[0]))
    with open_store(db_path) as store:
        assert all_traces(store) == before
        assert store.get_trace(trace_id_of(spans[0])) == trace_before
        assert store.span_count == 2
        store.write(maker.request(start=NOW - S, duration=MS))
        assert store.span_count == 4
        assert len(all_traces(store)) == 2


def test_files_are_owner_only(db_path, maker):
    with open_store(db_path) as store:
        store.write(maker.request(start=NOW - S, duration=MS))
        assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
        for suffix in ("-wal", "-shm"):
            sidecar = db_path.with_name(db_path.name + suffix)
            assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600, suffix
        # Every directory the store created, not only the last one.
        assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(db_path.parent.parent.stat().st_mode) == 0o700


def test_existing_loose_file_is_tightened(tmp_path):
    path = tmp_path / "traces.db"
    path.touch()
    os.chmod(path, 0o644)
    with open_store(path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "traces.db"
    path.write_bytes(b"definitely not sqlite " * 300)
    with pytest.raises(TraceStoreError) as info:
        open_store(path)
    message = str(info.value)
    assert str(path) in message
    assert "not a database" in message


def test_damaged_page_inside_a_store_is_found_at_open(db_path, maker):
    with open_store(db_path) as store:
        for i in range(50):
            store.write(maker.request(start=NOW - i * S, duration=MS))
    data = bytearray(db_path.read_bytes())
    assert len(data) > 4 * 4096
    data[2 * 4096 : 3 * 4096] = b"\xa5" * 4096  # page 3: one of the tables' b-tree pages
    db_path.write_bytes(bytes(data))
    with pytest.raises(TraceStoreError, match=r"corrupt") as info:
        open_store(db_path)
    assert str(db_path) in str(info.value)
    assert "\n" not in str(info.value)


def test_unopenable_path_is_a_clear_error(tmp_path):
    path = tmp_path / "traces.db"
    path.mkdir()
    with pytest.raises(TraceStoreError, match=str(path)):
        open_store(path)


def test_unknown_schema_version_and_foreign_database(tmp_path):
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(TraceStoreError, match=r"schema version 99") as info:
        open_store(newer)
    assert str(newer) in str(info.value)

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(TraceStoreError, match=r"not an aigw trace store"):
        open_store(foreign)


def test_failed_write_keeps_nothing_of_the_batch(store, maker, monkeypatch):
    store.write(maker.request(start=NOW - 2 * S, duration=MS))
    batch = maker.request(start=NOW - S, duration=MS)

    def disk_fails(*args: object) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    # Fails after the batch's rows and summary are written, just before COMMIT.
    monkeypatch.setattr(store, "_evict", disk_fails)
    with pytest.raises(TraceStoreError, match=r"write failed: disk I/O error") as info:
        store.write(batch)
    assert str(store.path) in str(info.value)
    assert store.get_trace(trace_id_of(batch[0])) == []
    assert (store.span_count, store.written, len(all_traces(store))) == (2, 2, 1)

    monkeypatch.undo()
    assert store.write(batch) == 2
    assert (store.span_count, store.written, len(all_traces(store))) == (4, 4, 2)


def test_queries_do_not_wait_for_an_open_write_transaction(store, db_path, maker):
    store.write(maker.request(start=NOW - S, duration=MS))
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("DELETE FROM traces")
        started = time.monotonic()
        assert len(all_traces(store)) == 1  # the committed snapshot, at once
        assert time.monotonic() - started < 1.0
    finally:
        other.execute("ROLLBACK")
        other.close()


# ---------------------------------------------------------------------------- schema versions

# Version 1 as the first release created it (frozen: it is what old files hold).
_V1_SCHEMA = """
CREATE TABLE spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT NOT NULL,
    name TEXT NOT NULL, kind TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    status_code TEXT NOT NULL, status_message TEXT NOT NULL, attributes TEXT NOT NULL,
    events TEXT NOT NULL, local_root INTEGER NOT NULL, route TEXT NOT NULL,
    request_model TEXT NOT NULL, rpc_status_code TEXT NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);
CREATE TABLE traces (
    trace_id TEXT NOT NULL PRIMARY KEY, root_span_name TEXT NOT NULL, model TEXT NOT NULL,
    status TEXT NOT NULL, rpc_status_code TEXT NOT NULL, start_ns INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL, span_count INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX traces_by_start ON traces (start_ns, trace_id);
CREATE INDEX traces_by_model ON traces (model, start_ns, trace_id);
CREATE INDEX traces_by_status ON traces (status, start_ns, trace_id);
INSERT INTO spans VALUES ('0af7651916cd43dd8448eb211c80319c', 'b7ad6b7169203331', '',
    'aigw.v1.Completion/Complete', 'SERVER', 1000, 3000, 'UNSET', '', '{"aigw.route":"old"}',
    '[]', 1, 'old', '', 'OK');
INSERT INTO traces VALUES ('0af7651916cd43dd8448eb211c80319c', 'aigw.v1.Completion/Complete',
    'old', 'OK', 'OK', 1000, 2000, 1);
PRAGMA user_version = 1;
"""


def test_version_1_file_is_migrated_in_place(db_path, maker):
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.executescript(_V1_SCHEMA)
    conn.close()
    # Far-future limits: the old trace (start 1000 ns) must survive to be checked.
    with open_store(db_path, max_age=1e10) as store:
        [old] = all_traces(store)
        assert (old.trace_id, old.model, old.span_count, old.replica) == (
            "0af7651916cd43dd8448eb211c80319c",
            "old",
            1,
            "",
        )
        assert [s.name for s in store.get_trace(old.trace_id)] == ["aigw.v1.Completion/Complete"]
        new = SpanMaker(replica="replica-7").request(start=NOW - S, duration=MS)
        store.write(new)
        assert summary(store, trace_id_of(new[0])).replica == "replica-7"
        assert store.span_count == 3
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM spans WHERE replica = ''").fetchone()[0] == 1
    conn.close()
    # And a migrated file opens again as a current one.
    with open_store(db_path, max_age=1e10) as store:
        assert len(all_traces(store)) == 2


def test_failed_migration_leaves_the_file_at_version_1(db_path, monkeypatch):
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.executescript(_V1_SCHEMA)
    conn.close()
    broken = {1: trace_store_sqlite._MIGRATIONS[1] + ";\nALTER TABLE nowhere ADD COLUMN x TEXT"}
    monkeypatch.setattr(trace_store_sqlite, "_MIGRATIONS", broken)
    with pytest.raises(TraceStoreError, match="no such table: nowhere"):
        open_store(db_path, max_age=1e10)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        columns = [row[1] for row in conn.execute("PRAGMA table_info(spans)")]
        assert "replica" not in columns
    conn.close()
    monkeypatch.undo()
    with open_store(db_path, max_age=1e10) as store:
        assert all_traces(store)[0].replica == ""
