"""The gateway's own always-on trace store: ended spans in an embedded SQLite file.

Operators list and inspect recent traces through the admin API without running any tracing
backend; this module is the storage half (`TraceStoreProcessor` feeds it from the SDK).

File and durability
    One SQLite file (plus its ``-wal``/``-shm`` siblings), owner-only (0600) in an owner-only
    directory (0700 for the directories this module creates): span attributes carry request
    metadata (and prompts, when content capture is on) and must not be world-readable.
    Deleted traces free pages for reuse; the file does not shrink. WAL journal with
    ``synchronous=NORMAL``: a
    committed batch survives a crash of the gateway process (``kill -9``); after an OS crash
    or power loss the last few batches may roll back, never tear. ``PRAGMA user_version``
    holds the schema version; a file of another version, a foreign SQLite database or a
    corrupt file raises `TraceStoreError` naming the file and the problem (`open` reads every
    page to check, about 1 ms per thousand stored spans).

Tables
    ``spans`` holds one row per (trace_id, span_id), so a span written twice is stored once
    (the later write wins). ``traces`` holds one summary row per trace, recomputed in SQL
    from the trace's stored spans on every write that touches it — so it is right whatever
    order or batches the spans arrive in (children normally end, and arrive, before their
    root):

    - root: the trace's *local* root — a span with no parent or a remote parent (the SERVER
      span of a request that carried a traceparent); before it arrives, the span that started
      first. Several local roots (one trace, several requests) → the first to start.
    - root_span_name, rpc_status_code (``rpc.response.status_code``): the root's.
    - model: ``aigw.route`` of any span, else ``gen_ai.request.model`` of any span, else "".
    - status: once a local root is stored, "ERROR" when its status is ERROR or it answered a
      non-OK gRPC status (server spans keep status UNSET for a caller's mistake such as
      NOT_FOUND, as the RPC conventions ask, but an operator listing failed requests wants
      those too); before that, "ERROR" when any span is ERROR; else "OK".
    - start_ns, duration_ns: the extent of the stored spans (first start → last end); once the
      SERVER root is stored this is the request's latency, since it encloses its children.

Retention
    After each write, whole traces are evicted oldest-first (by start) while more than
    ``max_spans`` spans are stored, and traces that started more than ``max_age_seconds`` ago
    are evicted (checked at most once a second; `enforce_retention` forces it). A span that
    arrives after its trace was evicted starts a new, partial trace.

Threads
    Writes take a writer connection under a lock (one writer thread in practice: the
    processor's); queries take a separate reader connection under their own lock, so thanks
    to WAL a query never waits for a batch being written. The running span total lives in
    memory, so one file must have one writing `TraceStore` at a time.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from opentelemetry.sdk.trace import ReadableSpan

__all__ = [
    "MAX_PAGE_SIZE",
    "SCHEMA_VERSION",
    "StoredEvent",
    "StoredSpan",
    "TraceStore",
    "TraceStoreError",
    "TraceSummary",
]

SCHEMA_VERSION: Final = 1
MAX_PAGE_SIZE: Final = 1000

# Attribute keys the summary is derived from (they are copied to columns on write so the
# summary can be recomputed in SQL without parsing JSON).
_ROUTE_KEY: Final = "aigw.route"
_REQUEST_MODEL_KEY: Final = "gen_ai.request.model"
_RPC_STATUS_KEY: Final = "rpc.response.status_code"

# Expiry needs a range scan, so it runs at most this often rather than on every write.
_AGE_CHECK_INTERVAL_NS: Final = 1_000_000_000

_HEX_DIGITS: Final = frozenset("0123456789abcdef")

# SQLite integers are 64-bit; a Timestamp in year 9999 in nanoseconds is not.
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

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
    span_count      INTEGER NOT NULL
) WITHOUT ROWID;
-- Newest-first listing, retention by age and by count (oldest first) all walk this one.
CREATE INDEX traces_by_start ON traces (start_ns, trace_id);
CREATE INDEX traces_by_model ON traces (model, start_ns, trace_id);
CREATE INDEX traces_by_status ON traces (status, start_ns, trace_id);
"""

_INSERT_SPAN: Final = """
INSERT OR IGNORE INTO spans (
    trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns, status_code,
    status_message, attributes, events, local_root, route, request_model, rpc_status_code
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# Only run when a batch re-writes spans already stored (rare), so the common path can count
# new rows from INSERT OR IGNORE's rowcount.
_UPSERT_SPAN: Final = (
    _INSERT_SPAN.replace("INSERT OR IGNORE", "INSERT")
    + """
ON CONFLICT (trace_id, span_id) DO UPDATE SET
    parent_span_id = excluded.parent_span_id, name = excluded.name, kind = excluded.kind,
    start_ns = excluded.start_ns, end_ns = excluded.end_ns,
    status_code = excluded.status_code, status_message = excluded.status_message,
    attributes = excluded.attributes, events = excluded.events,
    local_root = excluded.local_root, route = excluded.route,
    request_model = excluded.request_model, rpc_status_code = excluded.rpc_status_code
"""
)

# Recomputes one trace's summary from all its stored spans (see the module docstring).
# `WHERE true` disambiguates the upsert's ON from a join constraint (SQLite's documented quirk).
_REFRESH_SUMMARY: Final = """
INSERT INTO traces (
    trace_id, root_span_name, model, status, rpc_status_code, start_ns, duration_ns, span_count
)
SELECT
    :trace_id,
    r.name,
    CASE WHEN a.route <> '' THEN a.route ELSE a.request_model END,
    CASE WHEN (CASE WHEN r.local_root
                    THEN r.status_code = 'ERROR' OR r.rpc_status_code NOT IN ('', 'OK')
                    ELSE a.any_error END)
         THEN 'ERROR' ELSE 'OK' END,
    r.rpc_status_code,
    a.start_ns,
    a.end_ns - a.start_ns,
    a.n
FROM (
    SELECT COUNT(*) AS n, MIN(start_ns) AS start_ns, MAX(end_ns) AS end_ns,
           MAX(status_code = 'ERROR') AS any_error,
           MAX(route) AS route, MAX(request_model) AS request_model
    FROM spans WHERE trace_id = :trace_id
) AS a, (
    SELECT name, local_root, status_code, rpc_status_code
    FROM spans WHERE trace_id = :trace_id
    ORDER BY local_root DESC, start_ns, span_id
    LIMIT 1
) AS r
WHERE true
ON CONFLICT (trace_id) DO UPDATE SET
    root_span_name = excluded.root_span_name, model = excluded.model,
    status = excluded.status, rpc_status_code = excluded.rpc_status_code,
    start_ns = excluded.start_ns, duration_ns = excluded.duration_ns,
    span_count = excluded.span_count
"""

_SUMMARY_COLUMNS: Final = (
    "trace_id, root_span_name, model, status, rpc_status_code, start_ns, duration_ns, span_count"
)
_SPAN_COLUMNS: Final = (
    "trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns, status_code, "
    "status_message, attributes, events"
)


class TraceStoreError(Exception):
    """The trace store file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class TraceSummary:
    trace_id: str
    root_span_name: str
    model: str
    # "OK" or "ERROR".
    status: str
    # The root span's gRPC status code name, e.g. "NOT_FOUND"; "" when it has none.
    rpc_status_code: str
    start_ns: int
    duration_ns: int
    span_count: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredSpan:
    trace_id: str
    span_id: str
    # "" for a span without a parent; a remote parent's id is kept.
    parent_span_id: str
    name: str
    # "SERVER", "CLIENT", "INTERNAL", "PRODUCER" or "CONSUMER".
    kind: str
    start_ns: int
    end_ns: int
    # "UNSET", "OK" or "ERROR".
    status_code: str
    status_message: str
    # Values keep their JSON type: str, bool, int, float, or a list of them.
    attributes: dict[str, Any]
    events: list[StoredEvent]


class TraceStore:
    """An embedded SQLite trace store; build it with `TraceStore.open`."""

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
    def open(cls, path: Path, *, max_spans: int, max_age_seconds: float) -> TraceStore:
        """Open (creating if needed) the store at `path`, then apply retention once.

        Raises `TraceStoreError` for a file that cannot be used, `ValueError` for bad limits.
        """
        if max_spans < 1:
            raise ValueError(f"max_spans: must be at least 1, got {max_spans}")
        if not (max_age_seconds > 0 and math.isfinite(max_age_seconds)):
            raise ValueError(f"max_age_seconds: must be a positive number, got {max_age_seconds}")
        path = Path(path)
        writer: sqlite3.Connection | None = None
        reader: sqlite3.Connection | None = None
        try:
            _make_private_dirs(path.parent)
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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ counters

    @property
    def written(self) -> int:
        """Spans written since open (a re-written span counts again)."""
        return self._written

    @property
    def evicted(self) -> int:
        """Spans evicted by retention since open."""
        return self._evicted

    @property
    def span_count(self) -> int:
        """Spans currently stored."""
        return self._span_total

    # ------------------------------------------------------------------ writes

    def write(self, spans: Sequence[ReadableSpan]) -> int:
        """Store `spans` in one transaction, then apply retention; returns spans written.

        Raises `TraceStoreError` when the batch could not be stored (nothing of it is kept).
        """
        rows = [_span_row(span) for span in spans]
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
            cutoff = _clamp(now_ns - int(self.max_age_seconds * 1e9))
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

    def list_traces(
        self,
        *,
        model: str = "",
        status: str = "",
        start_min_ns: int | None = None,
        start_max_ns: int | None = None,
        min_duration_ns: int = 0,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[TraceSummary], str]:
        """One page of trace summaries, newest first, and the next page's token ("" at the end).

        `start_min_ns` is inclusive and `start_max_ns` exclusive ("started before");
        `status` is "OK", "ERROR" or "" for any. Raises `ValueError` naming the bad argument.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size: must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
        if status not in ("", "OK", "ERROR"):
            raise ValueError(f'status: must be "OK", "ERROR" or "", got {status!r}')
        where: list[str] = []
        params: list[object] = []
        if model:
            where.append("model = ?")
            params.append(model)
        if status:
            where.append("status = ?")
            params.append(status)
        if start_min_ns is not None:
            where.append("start_ns >= ?")
            params.append(_clamp(start_min_ns))
        if start_max_ns is not None:
            where.append("start_ns < ?")
            params.append(_clamp(start_max_ns))
        if min_duration_ns > 0:
            where.append("duration_ns >= ?")
            params.append(_clamp(min_duration_ns))
        if page_token:
            where.append("(start_ns, trace_id) < (?, ?)")
            params.extend(_decode_page_token(page_token))
        sql = f"SELECT {_SUMMARY_COLUMNS} FROM traces"  # noqa: S608 - fixed fragments only
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_ns DESC, trace_id DESC LIMIT ?"
        params.append(page_size + 1)
        rows = self._query(sql, params)
        page = [TraceSummary(*row) for row in rows[:page_size]]
        token = ""
        if len(rows) > page_size:
            last = page[-1]
            token = _encode_page_token(last.start_ns, last.trace_id)
        return page, token

    def get_trace(self, trace_id: str) -> list[StoredSpan]:
        """Every stored span of `trace_id` (32 hex digits) by start time; [] when unknown."""
        trace_id = trace_id.lower()
        if len(trace_id) != 32 or not _HEX_DIGITS.issuperset(trace_id):
            raise ValueError(f"trace_id: must be 32 hex digits, got {trace_id!r}")
        rows = self._query(
            f"SELECT {_SPAN_COLUMNS} FROM spans WHERE trace_id = ?"  # noqa: S608 - constant
            " ORDER BY start_ns, span_id",
            (trace_id,),
        )
        return [_stored_span(row) for row in rows]

    def _query(self, sql: str, params: Iterable[object]) -> list[tuple[Any, ...]]:
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


def _make_private_dirs(directory: Path) -> None:
    """Create the missing directories of `directory` as 0700; existing ones are left alone
    (they may be shared, e.g. /var/lib)."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
            # mkdir's mode is filtered by the umask; make it exact.
            os.chmod(d, 0o700)


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
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise TraceStoreError(
                f"trace store {path}: schema version {version} is not supported "
                f"(this gateway reads version {SCHEMA_VERSION}); move the file aside to start "
                "a new store"
            )
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


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


# ---------------------------------------------------------------------- encoding


def _span_row(span: ReadableSpan) -> tuple[object, ...]:
    ctx = span.get_span_context()
    if ctx is None:  # pragma: no cover - the SDK always sets one
        raise ValueError(f"span {span.name!r} has no span context")
    parent = span.parent
    # One plain-dict copy: the SDK's attribute mapping is slow to read key by key.
    attrs = dict(span.attributes or {})
    start_ns = span.start_time or 0
    end_ns = span.end_time or start_ns
    events = span.events
    status = span.status
    return (
        format(ctx.trace_id, "032x"),
        format(ctx.span_id, "016x"),
        format(parent.span_id, "016x") if parent is not None else "",
        span.name,
        span.kind.name,
        start_ns,
        end_ns,
        status.status_code.name,
        status.description or "",
        _encode(attrs),
        _encode(
            [
                {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})}
                for e in events
            ]
        )
        if events
        else "[]",
        1 if parent is None or parent.is_remote else 0,
        _str_attr(attrs, _ROUTE_KEY),
        _str_attr(attrs, _REQUEST_MODEL_KEY),
        _str_attr(attrs, _RPC_STATUS_KEY),
    )


def _str_attr(attrs: dict[str, object], key: str) -> str:
    value = attrs.get(key)
    if isinstance(value, str):
        return value
    # An int status code from some other instrumentation still beats "".
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""


# Tuples (the SDK's sequence attributes) become JSON arrays. Shared encoders: json.dumps
# would build one per call with these options, and a `default` hook halves the C encoder's
# speed, so it is only used for the rare value that slipped past the SDK's attribute cleaning
# (kept as text rather than failing the whole batch).
_fast_encode: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_lenient_encode: Final = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, default=str
).encode


def _encode(value: object) -> str:
    try:
        return _fast_encode(value)
    except (TypeError, ValueError):
        return _lenient_encode(value)


def _stored_span(row: tuple[Any, ...]) -> StoredSpan:
    (trace_id, span_id, parent, name, kind, start, end, code, message, attrs, events) = row
    return StoredSpan(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=kind,
        start_ns=start,
        end_ns=end,
        status_code=code,
        status_message=message,
        attributes=json.loads(attrs),
        events=[StoredEvent(e["name"], e["time_ns"], e["attributes"]) for e in json.loads(events)],
    )


def _clamp(value: int) -> int:
    return min(max(value, _INT64_MIN), _INT64_MAX)


def _encode_page_token(start_ns: int, trace_id: str) -> str:
    raw = f"{start_ns}:{trace_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_page_token(token: str) -> tuple[int, str]:
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        start_text, trace_id = raw.decode("ascii").split(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("page_token: malformed; pass a previous response's token") from None
    well_formed = (
        start_text.isdigit()
        and int(start_text) <= _INT64_MAX
        and len(trace_id) == 32
        and _HEX_DIGITS.issuperset(trace_id)
    )
    if not well_formed:
        raise ValueError("page_token: malformed; pass a previous response's token")
    return int(start_text), trace_id
