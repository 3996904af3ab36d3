"""`PostgresTraceStore`: the trace store in PostgreSQL, shared by a fleet of gateway replicas.

Every replica writes its own spans and lists everyone's. The contract (summaries, retention,
page tokens) is in `gateway.telemetry.trace_store`; this module is how many writers keep it.

Tables (created and migrated by `gateway.pg_schema`, component "traces")
    ``aigw_spans``: one row per (trace_id, span_id), with the columns the summary derives from
    copied out of the attributes and ``replica``, the writer's ``service.instance.id``.
    ``aigw_traces``: one summary row per trace. Attributes and events are JSON in ``text``
    columns, not ``jsonb``: nothing queries inside them, ``jsonb`` would refuse the NaN and
    infinite floats a span attribute may hold and would reorder keys, and text is cheaper to
    write. Ids sort with the "C" collation, as SQLite sorts them, so pages come out alike.
    ``aigw_trace_retention``: one row, when retention last ran (fleet-wide).

Writes
    One transaction per batch: COPY into a session-scoped temporary table, then INSERT …
    SELECT … ON CONFLICT DO UPDATE into ``aigw_spans`` (the later write of a span wins; a
    batch holding a span twice keeps its later copy), then one INSERT … ON CONFLICT that
    recomputes the summary of every touched trace from all its stored spans. For 512-span
    batches COPY took about 30% less CPU than a pipelined ``executemany`` (41 against 57 ms,
    the insert step alone half the time; see docs/decisions.md).

    Two replicas may write spans of one trace at the same time (a caller that continues one
    trace across replicas). Each would recompute the summary from a snapshot missing the
    other's uncommitted spans, and the later commit would leave a stale summary. So a batch
    first takes ``pg_advisory_xact_lock`` for each touched trace (two-key form: a fixed class,
    and the trace id's first 32 bits), in sorted key order so that two batches can never wait
    for each other in a cycle. Then it locks the touched traces' summary rows (FOR UPDATE),
    which makes it wait for a retention run that is deleting one of them; everything after
    that sees the deletion, so a span of a just-evicted trace starts a new, partial trace.
    Each batch holds one advisory lock per touched trace until it commits, from PostgreSQL's
    shared lock table (``max_locks_per_transaction`` × ``max_connections`` slots, 6,400 by
    default; a 512-span batch takes at most 512).

Retention
    At most about once a second, fleet-wide: a writer whose own last attempt is a second old
    tries ``pg_try_advisory_xact_lock`` on the retention key (a replica that does not get it
    skips: another is running retention) and then claims the run in ``aigw_trace_retention``
    unless another replica ran it less than a second ago. The run deletes expired traces, then
    whole traces oldest-first while more than ``max_spans`` spans are stored, all in one
    transaction. It locks the victims' summary rows with SKIP LOCKED: a trace a batch is
    writing right now is left for the next run rather than waited for, so retention never
    waits for a writer and never deadlocks with one. Between runs the store can exceed
    ``max_spans`` by about a second's worth of spans. It runs in its own transaction after
    the batch commits, so a retention failure never loses a batch. `evicted` counts the spans
    this replica's runs deleted. `enforce_retention` runs it now (waiting for the lock).

Database unavailable
    `open` never connects: a gateway starts without its database. Each connection is made on
    first use, migrated once per store (under the schema lock), and replaced after it breaks.
    While the database cannot be reached, `write` and the queries raise
    `TraceStoreUnavailable` within the connect timeout (3 s by default), and the next call
    tries again; a write or query that fails on a connection broken while idle (the database
    restarted) is retried once at once on a new connection, which is safe because writes are
    idempotent. Server-side limits keep a sick database from holding a writer forever:
    ``statement_timeout`` 15 s, ``lock_timeout`` 10 s, and ``idle_in_transaction_session_timeout``
    60 s so a replica frozen mid-transaction releases its locks.

Credentials
    The URL's password never appears in an exception message or a log record: messages name
    the database as ``host:port`` and give libpq's reason as a fixed phrase ("connection
    refused", "password authentication failed" …) rather than its text, which names the user;
    the password is also registered with the process-wide log redactor, for the records
    psycopg itself writes.

Threads
    Writes use a writer connection under one lock (the processor's thread), queries a reader
    connection under another (``asyncio.to_thread`` from the admin API), so a query never
    waits for a batch in flight on this replica.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Self, TypeVar, cast

import psycopg
from opentelemetry.sdk.trace import ReadableSpan
from psycopg.conninfo import conninfo_to_dict

from gateway.pg_schema import SchemaTooNew, migrate
from gateway.postgres import (
    CONNECT_TIMEOUT_SECONDS,
    SESSION_OPTIONS,
    TCP_SETTINGS,
    is_unavailable,
    reason,
    target_of,
)
from gateway.redaction import REDACTOR
from gateway.telemetry.trace_store import (
    ROOT_ORDER,
    SPAN_ROW_COLUMNS,
    SUMMARY_COLUMNS,
    SUMMARY_SELECT,
    SUMMARY_UPSERT,
    SpanRow,
    SqlTraceStoreBase,
    TraceStoreError,
    TraceStoreUnavailable,
    check_limits,
    clamp_int64,
    span_row,
)

__all__ = ["MIGRATIONS", "SCHEMA_COMPONENT", "PostgresTraceStore"]

_log = logging.getLogger(__name__)

SCHEMA_COMPONENT: Final = "traces"

MIGRATIONS: Final = (
    """
CREATE TABLE aigw_spans (
    trace_id        text    COLLATE "C" NOT NULL,
    span_id         text    COLLATE "C" NOT NULL,
    parent_span_id  text    NOT NULL,
    name            text    NOT NULL,
    kind            text    NOT NULL,
    start_ns        bigint  NOT NULL,
    end_ns          bigint  NOT NULL,
    status_code     text    NOT NULL,
    status_message  text    NOT NULL,
    attributes      text    NOT NULL,
    events          text    NOT NULL,
    local_root      boolean NOT NULL,
    route           text    COLLATE "C" NOT NULL,
    request_model   text    COLLATE "C" NOT NULL,
    rpc_status_code text    NOT NULL,
    replica         text    NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);
CREATE TABLE aigw_traces (
    trace_id        text    COLLATE "C" NOT NULL PRIMARY KEY,
    root_span_name  text    NOT NULL,
    model           text    NOT NULL,
    status          text    NOT NULL,
    rpc_status_code text    NOT NULL,
    start_ns        bigint  NOT NULL,
    duration_ns     bigint  NOT NULL,
    span_count      integer NOT NULL,
    replica         text    NOT NULL
);
-- Newest-first listing, retention by age and by count (oldest first) all walk this one.
CREATE INDEX aigw_traces_by_start ON aigw_traces (start_ns, trace_id);
CREATE INDEX aigw_traces_by_model ON aigw_traces (model, start_ns, trace_id);
CREATE INDEX aigw_traces_by_status ON aigw_traces (status, start_ns, trace_id);
CREATE TABLE aigw_trace_retention (
    id       integer     PRIMARY KEY CHECK (id = 1),
    last_run timestamptz NOT NULL
);
INSERT INTO aigw_trace_retention VALUES (1, '-infinity');
""",
)

# Retention runs at most this often, per replica and (through aigw_trace_retention) fleet-wide.
_RETENTION_INTERVAL_NS: Final = 1_000_000_000

# Advisory lock keys, two-key form (a space apart from pg_schema's single-key lock):
# ("aigt", first 32 bits of the trace id) per trace, ("aigr", 0) for retention.
_TRACE_LOCK_CLASS: Final = 0x61696774
_RETENTION_LOCK_CLASS: Final = 0x61696772

_COLUMNS: Final = ", ".join(SPAN_ROW_COLUMNS)
_STAGING: Final = "aigw_spans_in"
_CREATE_STAGING: Final = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} (LIKE aigw_spans) ON COMMIT DELETE ROWS"
)
_COPY_SPANS: Final = f"COPY {_STAGING} ({_COLUMNS}) FROM STDIN"
_MERGE_SPANS: Final = (
    f"INSERT INTO aigw_spans ({_COLUMNS}) SELECT {_COLUMNS} FROM {_STAGING} "  # noqa: S608
    "ON CONFLICT (trace_id, span_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SPAN_ROW_COLUMNS[2:])
)
_LOCK_TRACES: Final = (
    "SELECT count(pg_advisory_xact_lock(%s::int4, k)) FROM unnest(%s::int4[]) AS k"
)
# Driven by the list of ids (one primary-key probe each), like the refresh below: a prepared
# `trace_id = ANY(…)` kept a generic plan made while the table was small and unanalysed — a
# sequential scan that took 0.3–2 s per batch at a few thousand traces (seen in the bench).
_LOCK_SUMMARIES: Final = """
SELECT 1 FROM aigw_traces s
JOIN unnest(%s::text[]) AS t(trace_id) ON s.trace_id = t.trace_id
FOR UPDATE OF s
"""

# Recomputes the summaries of the traces in %s from all their stored spans (the contract in
# trace_store); r is the root: a local root if any, else the earliest span. Driven by the list
# of ids, so each trace is two primary-key lookups whatever the table's size or statistics (a
# `trace_id = ANY(…)` GROUP BY was planned as a sequential scan of all spans).
_REFRESH_SUMMARIES: Final = f"""
INSERT INTO aigw_traces ({SUMMARY_COLUMNS})
SELECT t.trace_id, {SUMMARY_SELECT}
FROM unnest(%s::text[]) AS t(trace_id)
CROSS JOIN LATERAL (
    SELECT count(*) AS n, min(start_ns) AS start_ns, max(end_ns) AS end_ns,
           bool_or(status_code = 'ERROR') AS any_error,
           max(route) AS route, max(request_model) AS request_model
    FROM aigw_spans AS s WHERE s.trace_id = t.trace_id
) AS a
CROSS JOIN LATERAL (
    SELECT name, local_root, status_code, rpc_status_code, replica
    FROM aigw_spans AS s WHERE s.trace_id = t.trace_id {ROOT_ORDER}
) AS r
{SUMMARY_UPSERT}
"""  # noqa: S608 - constant fragments

# Claims this second's retention run unless another replica already did (the database's
# clock, so replicas' clocks need not agree).
_CLAIM_RETENTION: Final = """
UPDATE aigw_trace_retention SET last_run = clock_timestamp()
WHERE id = 1 AND last_run <= clock_timestamp() - make_interval(secs => %s)
RETURNING 1
"""
_DELETE_SUMMARIES: Final = """
DELETE FROM aigw_traces WHERE trace_id IN (
    SELECT trace_id FROM aigw_traces WHERE trace_id = ANY(%s) FOR UPDATE SKIP LOCKED
)
RETURNING trace_id
"""

_T = TypeVar("_T")


class PostgresTraceStore(SqlTraceStoreBase):
    """A trace store in a shared PostgreSQL database; build it with `PostgresTraceStore.open`."""

    _TRACES_TABLE = "aigw_traces"
    _SPANS_TABLE = "aigw_spans"
    _PLACEHOLDER = "%s"

    def __init__(
        self,
        url: str,
        *,
        max_spans: int,
        max_age_seconds: float,
        replica: str,
        connect_kwargs: dict[str, Any],
        target: str,
        password: str,
    ) -> None:
        self.max_spans: Final = max_spans
        self.max_age_seconds: Final = max_age_seconds
        self.replica: Final = replica
        # host:port, the only part of the URL that goes into messages.
        self.target: Final = target
        self._url = url
        self._connect_kwargs = connect_kwargs
        self._secrets = tuple(s for s in (url, password) if s)
        # Records that quote the password (psycopg's own, say) are rewritten before any
        # handler formats them. The password alone, not the URL: the redactor also redacts
        # the pieces of what it is given, and a key=value URL's pieces ("password",
        # "localhost") would garble every line that mentions them.
        self._redactor_key = f"trace-store-{id(self)}"
        REDACTOR.set_secrets(self._redactor_key, [password] if password else [])
        self._writer = _Session("writer")
        self._reader = _Session("reader")
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self._closed = False
        self._written = 0
        self._evicted = 0
        # Monotonic time of this replica's last retention attempt; None: the first write tries.
        self._last_retention_ns: int | None = None
        self._last_retention_error = ""

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        url: str,
        *,
        max_spans: int,
        max_age_seconds: float,
        replica: str,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> Self:
        """A store over the database at `url` (a libpq URL or key=value string).

        `replica` is this gateway's service.instance.id: it names the store's sessions in
        ``pg_stat_activity`` (application_name, unless the URL sets one). The replica column
        of each span comes from the span's own resource. Does not connect: the first write or
        query does (see the module docstring). Raises `TraceStoreError` for a URL that cannot
        be parsed (without repeating it) and `ValueError` for bad limits.
        """
        check_limits(max_spans, max_age_seconds)
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout: must be positive, got {connect_timeout}")
        try:
            info = conninfo_to_dict(url)
        except psycopg.Error:
            # Its message quotes the offending part of the URL, which may be the password.
            raise TraceStoreError(
                "trace store: the database URL cannot be parsed; check its syntax (a "
                "postgresql:// URL with percent-encoded special characters)"
            ) from None
        password = str(info.get("password") or "")
        options = " ".join(filter(None, (str(info.get("options") or ""), SESSION_OPTIONS)))
        connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(connect_timeout)),
            "options": options,
        }
        if not info.get("application_name"):
            # PostgreSQL keeps 63 bytes of it.
            connect_kwargs["application_name"] = f"aigw-traces {replica}"[:63]
        for key, value in TCP_SETTINGS.items():
            if key not in info:
                connect_kwargs[key] = value
        return cls(
            url,
            max_spans=max_spans,
            max_age_seconds=max_age_seconds,
            replica=replica,
            connect_kwargs=connect_kwargs,
            target=target_of(info),
            password=password,
        )

    def close(self) -> None:
        """Close both connections; later calls are no-ops, later writes and queries raise."""
        with self._writer.lock, self._reader.lock:
            if self._closed:
                return
            self._closed = True
            self._writer.discard()
            self._reader.discard()
        REDACTOR.set_secrets(self._redactor_key, ())

    # ------------------------------------------------------------------ writes

    def write(self, spans: Sequence[ReadableSpan]) -> int:
        """Store `spans` in one transaction, then maybe apply retention; returns spans written.

        Raises `TraceStoreUnavailable` while the database cannot be reached (retry the batch
        later) and `TraceStoreError` when it rejects the batch; nothing of it is kept either way.
        """
        if not spans:
            return 0
        # Keyed by (trace_id, span_id): one INSERT cannot update a row twice, and the later
        # copy of a span must win, as a later write would.
        unique = {(row[0], row[1]): row for row in map(_pg_row, spans)}
        rows = list(unique.values())
        touched = sorted({row[0] for row in rows})
        keys = sorted({_lock_key(trace_id) for trace_id in touched})

        def store(conn: psycopg.Connection) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(_LOCK_TRACES, (_TRACE_LOCK_CLASS, keys))
                # Planned afresh each time (not prepared): see _LOCK_SUMMARIES.
                cur.execute(_LOCK_SUMMARIES, (touched,), prepare=False)
                with cur.copy(_COPY_SPANS) as copy:
                    for row in rows:
                        copy.write_row(row)
                cur.execute(_MERGE_SPANS)
                cur.execute(_REFRESH_SUMMARIES, (touched,))

        with self._writer.lock:
            self._run(self._writer, "write", store)
            self._written += len(spans)
            now = time.monotonic_ns()
            last = self._last_retention_ns
            if last is None or now - last >= _RETENTION_INTERVAL_NS:
                self._last_retention_ns = now
                self._retain_after_write()
        return len(spans)

    def _retain_after_write(self) -> None:
        # Caller holds the writer lock. The batch is committed: a retention failure must not
        # make the caller retry it, so it is logged (once per distinct error) instead.
        try:
            self._evicted += self._run(
                self._writer, "retention", lambda conn: self._retain(conn, time.time_ns())
            )
        except TraceStoreError as exc:
            if isinstance(exc, TraceStoreUnavailable):
                _log.debug("trace store retention skipped: %s", exc)
            elif str(exc) != self._last_retention_error:
                _log.warning("trace store retention failed (retried within a second): %s", exc)
            self._last_retention_error = str(exc)
        else:
            self._last_retention_error = ""

    def enforce_retention(self, now_ns: int | None = None) -> int:
        """Run retention now (waiting for another replica's run to finish), ages relative to
        `now_ns` (default now); returns the spans it evicted."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        with self._writer.lock:
            evicted = self._run(
                self._writer, "retention", lambda conn: self._retain(conn, now_ns, force=True)
            )
            self._evicted += evicted
        return evicted

    def _retain(self, conn: psycopg.Connection, now_ns: int, *, force: bool = False) -> int:
        """One retention run in its own transaction (see the module docstring); the spans
        evicted, or 0 when another replica holds or recently did the run."""
        with conn.transaction(), conn.cursor() as cur:
            if force:
                cur.execute("SELECT pg_advisory_xact_lock(%s::int4, 0)", (_RETENTION_LOCK_CLASS,))
                cur.execute(_CLAIM_RETENTION, (0,))
            else:
                cur.execute(
                    "SELECT pg_try_advisory_xact_lock(%s::int4, 0)", (_RETENTION_LOCK_CLASS,)
                )
                if not _scalar(cur.fetchone()):
                    return 0
                cur.execute(_CLAIM_RETENTION, (_RETENTION_INTERVAL_NS / 1e9,))
                if cur.fetchone() is None:
                    return 0
            cutoff = clamp_int64(now_ns - int(self.max_age_seconds * 1e9))
            cur.execute(
                "SELECT trace_id, span_count FROM aigw_traces WHERE start_ns < %s", (cutoff,)
            )
            victims: dict[str, int] = dict(cur.fetchall())
            cur.execute("SELECT COALESCE(sum(span_count), 0) FROM aigw_traces")
            excess = int(_scalar(cur.fetchone())) - sum(victims.values()) - self.max_spans
            if excess > 0:
                # Every trace holds at least one span, so `excess` rows always free enough.
                cur.execute(
                    "SELECT trace_id, span_count FROM aigw_traces WHERE start_ns >= %s "
                    "ORDER BY start_ns, trace_id LIMIT %s",
                    (cutoff, excess),
                )
                for trace_id, count in cur.fetchall():
                    victims[trace_id] = count
                    excess -= count
                    if excess <= 0:
                        break
            if not victims:
                return 0
            cur.execute(_DELETE_SUMMARIES, (list(victims),))
            deleted = [row[0] for row in cur.fetchall()]
            if not deleted:
                return 0
            cur.execute("DELETE FROM aigw_spans WHERE trace_id = ANY(%s)", (deleted,))
            return max(cur.rowcount, 0)

    # ------------------------------------------------------------------ queries

    def _query(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._reader.lock:
            return self._run(
                self._reader, "query", lambda conn: conn.execute(sql, params).fetchall()
            )

    # ------------------------------------------------------------------ connections

    def _run(self, session: _Session, action: str, work: Callable[[psycopg.Connection], _T]) -> _T:
        """`work` on `session`'s connection (the caller holds its lock), connecting as needed;
        psycopg errors become store errors.

        A connection that turns out to have broken while idle is replaced and `work` retried
        once: the database restarted, and the next attempt is likely to succeed at once.
        """
        if self._closed:
            raise TraceStoreError(f"trace store {self.target}: closed")
        for attempt in (1, 2):
            fresh = session.conn is None
            if session.conn is None:
                session.conn = self._connect()
            conn = session.conn
            try:
                return work(conn)
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    session.discard()
                    if attempt == 1 and not fresh and is_unavailable(exc):
                        continue
                raise self._error(action, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self) -> psycopg.Connection:
        """A new session, with the schema migrated (once per store) and the staging table."""
        try:
            conn = psycopg.connect(self._url, **self._connect_kwargs)
        except psycopg.Error as exc:
            raise self._error("connect", exc) from None
        try:
            with self._schema_lock:
                if not self._schema_ready:
                    migrate(conn, SCHEMA_COMPONENT, MIGRATIONS)
                    self._schema_ready = True
            conn.execute(_CREATE_STAGING)
        except (psycopg.Error, SchemaTooNew) as exc:
            with contextlib.suppress(psycopg.Error):
                conn.close()
            if isinstance(exc, SchemaTooNew):
                raise TraceStoreError(f"trace store {self.target}: {exc}") from None
            raise self._error("schema migration", exc) from None
        return conn

    def _error(self, action: str, exc: psycopg.Error) -> TraceStoreError:
        """The store error for `exc`: unavailable for a database that is away, else an error;
        the message holds host:port and a reason, never the URL, user or password."""
        text = f"trace store {self.target}: {action} failed: {reason(exc)}"
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        if is_unavailable(exc):
            return TraceStoreUnavailable(text)
        return TraceStoreError(text)


# ---------------------------------------------------------------------- helpers


class _Session:
    """One connection of the store, opened on first use and dropped when it breaks; whoever
    uses `conn` holds `lock`."""

    def __init__(self, role: str) -> None:
        self.role: Final = role
        self.lock: Final = threading.Lock()
        self.conn: psycopg.Connection | None = None

    def discard(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


def _pg_row(span: ReadableSpan) -> SpanRow:
    row = span_row(span)
    # PostgreSQL's text type cannot hold NUL, and one such span would fail its whole batch
    # (the JSON columns never hold one: JSON escapes control characters). Name, status
    # message, route, model, rpc code and replica are the free-text columns.
    _, _, _, name, _, _, _, _, message, _, _, _, route, model, code, replica = row
    if "\x00" in f"{name}{message}{route}{model}{code}{replica}":
        return cast(
            SpanRow, tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in row)
        )
    return row


def _lock_key(trace_id: str) -> int:
    # The id's first 32 bits as a signed int4; two traces sharing a key only share a lock.
    return int(trace_id[:8], 16) - 2**31


def _scalar(row: tuple[Any, ...] | None) -> Any:
    return row[0] if row else None
