"""`SqliteTraceStore`: the trace store in an embedded SQLite file, for a single gateway.

The contract (summaries, retention, page tokens) is in `gateway.telemetry.trace_store`; this
module is how one file keeps it.

File and durability
    One SQLite file (plus its ``-wal``/``-shm`` siblings), owner-only (0600) in an owner-only
    directory (0700 for the directories this module creates): span attributes carry request
    metadata (and prompts, when content capture is on) and must not be world-readable.
    Deleted traces free pages for reuse; the file does not shrink. WAL journal with
    ``synchronous=NORMAL``: a
    committed batch survives a crash of the gateway process (``kill -9``); after an OS crash
    or power loss the last few batches may roll back, never tear. ``PRAGMA user_version``
    holds the schema version; a file of a newer version, a foreign SQLite database or a
    corrupt file raises `TraceStoreError` naming the file and the problem (`open` reads every
    page to check, about 1 ms per thousand stored spans).

Schema versions
    1: the first release. 2: a ``replica`` column on ``spans`` and ``traces``. `open` migrates
    an older file in place, in one transaction, before anything else touches it (summaries of
    traces stored by version 1 keep replica "").

Tables
    ``spans`` holds one row per (trace_id, span_id), with the columns the summary derives from
    copied out of the attributes. ``traces`` holds one summary row per trace, recomputed in SQL
    from the trace's stored spans on every write that touches it.

Retention
    After each write, whole traces are evicted oldest-first (by start) while more than
    ``max_spans`` spans are stored, and traces that started more than ``max_age_seconds`` ago
    are evicted (checked at most once a second; `enforce_retention` forces it).

Threads
    Writes take a writer connection under a lock (one writer thread in practice: the
    processor's); queries take a separate reader connection under their own lock, so thanks
    to WAL a query never waits for a batch being written. The running span total lives in
    memory, so one file must have one writing `SqliteTraceStore` at a time.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Self

from opentelemetry.sdk.trace import ReadableSpan

from gateway.state_dir import private_dir
from gateway.telemetry.trace_store import (
    ROOT_ORDER,
    SPAN_ROW_COLUMNS,
    SUMMARY_COLUMNS,
    SUMMARY_SELECT,
    SUMMARY_UPSERT,
    SqlTraceStoreBase,
    TraceStoreError,
    check_limits,
    clamp_int64,
    span_row,
)

__all__ = ["SCHEMA_VERSION", "SqliteTraceStore"]

SCHEMA_VERSION: Final = 2

# Expiry needs a range scan, so it runs at most this often rather than on every write.
_AGE_CHECK_INTERVAL_NS: Final = 1_000_000_000

# The current schema, for a new file.
_SCHEMA: Final = """
CREATE TABLE spans (
    trace_id        TEXT    NOT NULL,
    span_id         TEXT    NOT NULL,
    parent_span_id  TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    start_ns        INTEGER NOT NULL,
    end_ns          INTEGER NOT NULL,
    status_code     TEXT    NOT NULL,
    status_message  TEXT    NOT NULL,
    attributes      TEXT    NOT NULL,
    events          TEXT    NOT NULL,
    -- Derived from the span on write: 1 when it has no parent or a remote one.
    local_root      INTEGER NOT NULL,
    route           TEXT    NOT NULL,
    request_model   TEXT    NOT NULL,
    rpc_status_code TEXT    NOT NULL,
    replica         TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (trace_id, span_id)
);
CREATE TABLE traces (
    trace_id        TEXT    NOT NULL PRIMARY KEY,
    root_span_name  TEXT    NOT NULL,
    model           TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    rpc_status_code TEXT    NOT NULL,
    start_ns        INTEGER NOT NULL,
    duration_ns     INTEGER NOT NULL,
    span_count      INTEGER NOT NULL,
    replica         TEXT    NOT NULL DEFAULT ''
) WITHOUT ROWID;
-- Newest-first listing, retention by age and by count (oldest first) all walk this one.
CREATE INDEX traces_by_start ON traces (start_ns, trace_id);
CREATE INDEX traces_by_model ON traces (model, start_ns, trace_id);
CREATE INDEX traces_by_status ON traces (status, start_ns, trace_id);
"""

# Migrations from version N to N + 1, keyed by N. Each runs in `open`'s schema transaction.
_MIGRATIONS: Final = {
    1: """
ALTER TABLE spans ADD COLUMN replica TEXT NOT NULL DEFAULT '';
ALTER TABLE traces ADD COLUMN replica TEXT NOT NULL DEFAULT '';
""",
}

_INSERT_SPAN: Final = f"""
INSERT OR IGNORE INTO spans ({", ".join(SPAN_ROW_COLUMNS)})
VALUES ({", ".join("?" for _ in SPAN_ROW_COLUMNS)})
"""  # noqa: S608 - constant column names

# Only run when a batch re-writes spans already stored (rare), so the common path can count
# new rows from INSERT OR IGNORE's rowcount.
_UPSERT_SPAN: Final = (
    _INSERT_SPAN.replace("INSERT OR IGNORE", "INSERT")
    + "ON CONFLICT (trace_id, span_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SPAN_ROW_COLUMNS[2:])
)

# Recomputes one trace's summary from all its stored spans (see the contract in trace_store).
# `WHERE true` disambiguates the upsert's ON from a join constraint (SQLite's documented quirk).
_REFRESH_SUMMARY: Final = f"""
INSERT INTO traces ({SUMMARY_COLUMNS})
SELECT :trace_id, {SUMMARY_SELECT}
FROM (
    SELECT COUNT(*) AS n, MIN(start_ns) AS start_ns, MAX(end_ns) AS end_ns,
           MAX(status_code = 'ERROR') AS any_error,
           MAX(route) AS route, MAX(request_model) AS request_model
    FROM spans WHERE trace_id = :trace_id
) AS a, (
    SELECT name, local_root, status_code, rpc_status_code, replica
    FROM spans WHERE trace_id = :trace_id {ROOT_ORDER}
) AS r
WHERE true
{SUMMARY_UPSERT}
"""  # noqa: S608 - constant fragments


class SqliteTraceStore(SqlTraceStoreBase):
    """An embedded SQLite trace store; build it with `SqliteTraceStore.open`."""

    _TRACES_TABLE = "traces"
    _SPANS_TABLE = "spans"
    _PLACEHOLDER = "?"

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        *,
        max_spans: int,
        max_age_seconds: float,
    ) -> None:
        self.path: Final = path
        self.max_spans: Final = max_spans
        self.max_age_seconds: Final = max_age_seconds
        self._writer = writer
        self._reader = reader
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False
        self._written = 0
        self._evicted = 0
        self._span_total = 0
        # `open` applies retention straight away, so a store reopened after a long pause
        # never serves its stale traces; this only matters to a store built without `open`.
        self._last_age_check_ns = 0

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: Path, *, max_spans: int, max_age_seconds: float) -> Self:
        """Open (creating or migrating if needed) the store at `path`, then apply retention.

        Raises `TraceStoreError` for a file that cannot be used, `ValueError` for bad limits.
        """
        check_limits(max_spans, max_age_seconds)
        path = Path(path)
        writer: sqlite3.Connection | None = None
        reader: sqlite3.Connection | None = None
        try:
            private_dir(path.parent)
            _create_private_file(path)
            writer = _connect(path)
            _prepare_schema(writer, path)
            _check_integrity(writer, path)
            mode = writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise TraceStoreError(
                    f"trace store {path}: cannot use WAL journal mode (got {mode!r}); "
                    "put the store on a local filesystem"
                )
            reader = _connect(path)
            reader.execute("PRAGMA query_only=ON")
            store = cls(path, writer, reader, max_spans=max_spans, max_age_seconds=max_age_seconds)
            store._span_total = writer.execute(
                "SELECT COALESCE(SUM(span_count), 0) FROM traces"
            ).fetchone()[0]
            store.enforce_retention()
            _restrict_sidecars(path)
        except TraceStoreError:
            _close_quietly(writer, reader)
            raise
        except (sqlite3.Error, OSError) as exc:
            _close_quietly(writer, reader)
            raise TraceStoreError(f"trace store {path}: {_describe(exc)}") from exc
        return store

    def close(self) -> None:
        """Close both connections; later calls are no-ops, later queries raise."""
        with self._write_lock, self._read_lock:
            if self._closed:
                return
            self._closed = True
            _close_quietly(self._writer, self._reader)

    # ------------------------------------------------------------------ counters

    @property
    def span_count(self) -> int:
        """Spans currently stored."""
        return self._span_total

    # ------------------------------------------------------------------ writes

    def write(self, spans: Sequence[ReadableSpan]) -> int:
        """Store `spans` in one transaction, then apply retention; returns spans written.

        Raises `TraceStoreError` when the batch could not be stored (nothing of it is kept).
        """
        rows = [span_row(span) for span in spans]
        if not rows:
            return 0
        with self._write_lock:
            with self._transaction("write") as conn:
                new_rows = conn.executemany(_INSERT_SPAN, rows).rowcount
                if new_rows < len(rows):
                    conn.executemany(_UPSERT_SPAN, rows)
                touched = dict.fromkeys(row[0] for row in rows)
                conn.executemany(_REFRESH_SUMMARY, ({"trace_id": t} for t in touched))
                total = self._span_total + new_rows
                now_ns = time.time_ns()
                check_age = now_ns - self._last_age_check_ns >= _AGE_CHECK_INTERVAL_NS
                evicted = self._evict(conn, total, now_ns if check_age else None)
            # Only after COMMIT: a failed batch must leave the counters untouched.
            self._span_total = total - evicted
            self._written += len(rows)
            self._evicted += evicted
            if check_age:
                self._last_age_check_ns = now_ns
        return len(rows)

    def enforce_retention(self, now_ns: int | None = None) -> int:
        """Evict by count and by age (relative to `now_ns`, default now); returns spans evicted."""
        real_now_ns = time.time_ns()
        now_ns = real_now_ns if now_ns is None else now_ns
        with self._write_lock:
            with self._transaction("retention") as conn:
                evicted = self._evict(conn, self._span_total, now_ns)
            self._span_total -= evicted
            self._evicted += evicted
            # A hypothetical future `now_ns` must not postpone the writes' own age checks.
            self._last_age_check_ns = min(now_ns, real_now_ns)
        return evicted

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT on the writer connection, ROLLBACK on any error.

        The caller holds the write lock. SQLite errors become `TraceStoreError`.
        """
        self._check_open()
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise TraceStoreError(
                f"trace store {self.path}: {action} failed: {_describe(exc)}"
            ) from exc

    def _evict(self, conn: sqlite3.Connection, total: int, now_ns: int | None) -> int:
        """Delete expired traces (when `now_ns` is given), then the oldest beyond max_spans.

        Runs inside the caller's transaction; returns the spans deleted.
        """
        victims: dict[str, int] = {}
        if now_ns is not None:
            cutoff = clamp_int64(now_ns - int(self.max_age_seconds * 1e9))
            victims.update(
                conn.execute(
                    "SELECT trace_id, span_count FROM traces WHERE start_ns < ?", (cutoff,)
                )
            )
        excess = total - sum(victims.values()) - self.max_spans
        if excess > 0:
            # Walk oldest-first on the start index and stop as soon as enough is freed; the
            # expired traces just collected sit at the front of that walk, so skip them.
            cursor = conn.execute(
                "SELECT trace_id, span_count FROM traces ORDER BY start_ns, trace_id"
            )
            for trace_id, count in cursor:
                if trace_id in victims:
                    continue
                victims[trace_id] = count
                excess -= count
                if excess <= 0:
                    break
            cursor.close()
        if not victims:
            return 0
        keys = [(t,) for t in victims]
        conn.executemany("DELETE FROM spans WHERE trace_id = ?", keys)
        conn.executemany("DELETE FROM traces WHERE trace_id = ?", keys)
        return sum(victims.values())

    # ------------------------------------------------------------------ queries

    def _query(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            self._check_open()
            try:
                return self._reader.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise TraceStoreError(
                    f"trace store {self.path}: query failed: {_describe(exc)}"
                ) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise TraceStoreError(f"trace store {self.path}: closed")


# ---------------------------------------------------------------------- file handling


def _create_private_file(path: Path) -> None:
    """Create the database file 0600 before SQLite does (SQLite would apply the umask), and
    tighten an existing one. SQLite gives -wal/-shm the database file's permissions."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _restrict_sidecars(path: Path) -> None:
    # Belt and braces for sidecars left by an older run with looser permissions.
    for suffix in ("-wal", "-shm"):
        sidecar = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(sidecar.stat().st_mode) & 0o077:
                os.chmod(sidecar, 0o600)


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE … COMMIT), so a batch
    # is one transaction and readers never hold one open between queries.
    # check_same_thread=False: each connection is guarded by its own lock instead.
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=NORMAL")
    # A checkpoint held back by a long read lets the WAL grow; shrink it back afterwards
    # instead of keeping the high-water mark on disk forever.
    conn.execute("PRAGMA journal_size_limit=16777216")
    return conn


def _prepare_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in an empty file, or migrate an older one, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # The first read of the file: a file that is not SQLite fails here.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
            if tables:
                raise TraceStoreError(
                    f"trace store {path}: not an aigw trace store (an SQLite database with "
                    f"tables {', '.join(sorted(tables)[:5])}); point the trace store elsewhere"
                )
            _run_script(conn, _SCHEMA)
        elif not 0 < version <= SCHEMA_VERSION:
            raise TraceStoreError(
                f"trace store {path}: schema version {version} is not supported "
                f"(this gateway reads version {SCHEMA_VERSION} and migrates older ones); move "
                "the file aside to start a new store"
            )
        else:
            for from_version in range(version, SCHEMA_VERSION):
                _run_script(conn, _MIGRATIONS[from_version])
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # Not executescript: it COMMITs first, and the schema change must stay in the caller's
    # transaction so a failure leaves the file as it was.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    # Reads every page (about 1 ms per thousand stored spans), so damage deep inside the file
    # is an error at startup with the file's name, not a stream of failed writes later.
    rows = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
    if rows != ["ok"]:
        # One line for the operator; SQLite's report is multi-line with a banner.
        problems = [line for row in rows for line in row.splitlines() if "***" not in line]
        raise TraceStoreError(
            f"trace store {path}: file is corrupt ({'; '.join(problems[:3])}); move it aside "
            "to start a new store"
        )


def _close_quietly(*conns: sqlite3.Connection | None) -> None:
    for conn in conns:
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower() + (f" ({exc.filename})" if exc.filename else "")
    text = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        text += " (corrupt or not a trace store; move it aside to start a new store)"
    return text
