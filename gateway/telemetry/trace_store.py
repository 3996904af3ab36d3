"""The gateway's always-on trace store: the contract its backends keep, and what they share.

Operators list and inspect recent traces through the admin API without running any tracing
backend. `TraceStoreProcessor` feeds ended spans to a `TraceStore`; two backends implement it:

- `SqliteTraceStore` (``trace_store_sqlite``): an embedded SQLite file, one gateway.
- `PostgresTraceStore` (``trace_store_postgres``): one PostgreSQL database shared by a fleet
  of replicas, each writing its own spans and each listing everyone's.

Contract (both backends)
    Spans are stored by (trace_id, span_id): a span written twice is stored once, the later
    write wins. Each trace has one summary (`TraceSummary`), recomputed from all its stored
    spans whenever a write touches it, so it is right whatever order or batches the spans
    arrive in (children normally end, and arrive, before their root):

    - root: the trace's *local* root — a span with no parent or a remote parent (the SERVER
      span of a request that carried a traceparent); before it arrives, the span that started
      first. Several local roots (one trace, several requests) → the first to start.
    - root_span_name, rpc_status_code (``rpc.response.status_code``), replica: the root's.
    - model: ``aigw.route`` of any span, else ``gen_ai.request.model`` of any span, else "".
    - status: once a local root is stored, "ERROR" when its status is ERROR or it answered a
      non-OK gRPC status (server spans keep status UNSET for a caller's mistake such as
      NOT_FOUND, as the RPC conventions ask, but an operator listing failed requests wants
      those too); before that, "ERROR" when any span is ERROR; else "OK".
    - start_ns, duration_ns: the extent of the stored spans (first start → last end); once the
      SERVER root is stored this is the request's latency, since it encloses its children.
    - replica: ``service.instance.id`` of the resource that emitted the root ("" when the
      resource has none), so an operator can tell which replica served a request.

Retention
    Whole traces are evicted, oldest start first, while more than ``max_spans`` spans are
    stored, and traces that started more than ``max_age_seconds`` ago are evicted. A span that
    arrives after its trace was evicted starts a new, partial trace. `evicted` counts the spans
    this store object evicted (with a shared database, other replicas' evictions are theirs).

Listing and page tokens
    `list_traces` returns summaries newest first, ordered by (start_ns, trace_id) descending,
    and an opaque token for the next page ("" after the last). The token is the last row's
    (start_ns, trace_id) and a page holds only rows strictly older than it, so traces written
    meanwhile do not shift later pages (no offsets): a row is repeated or skipped only if its
    trace's start moved between pages (an earlier span of it arrived). Tokens are opaque but
    interchangeable between backends and replicas.

Errors
    `TraceStoreError`: the store cannot do what was asked (a corrupt file, a rejected batch);
    a batch that raised it is not stored at all. `TraceStoreUnavailable`, a subclass, is
    transient: the database cannot be reached right now; nothing of the batch is stored, and
    the caller should retry the same batch later. Messages name the store (a file path, or a
    database's host:port) and the problem, never a credential. Bad arguments raise
    `ValueError` whose message starts with the argument's name.

The rest of this module is shared by the backends: `SqlTraceStoreBase` (the queries,
counters and context manager both keep alike), span → row encoding (JSON for attributes and
events, plus the derived columns the summary is computed from), argument checks, the
listing's WHERE clause and the page tokens.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Final, Protocol, Self, TypeAlias

from opentelemetry.sdk.trace import ReadableSpan

__all__ = [
    "MAX_PAGE_SIZE",
    "StoredEvent",
    "StoredSpan",
    "TraceStore",
    "TraceStoreError",
    "TraceStoreUnavailable",
    "TraceSummary",
]

MAX_PAGE_SIZE: Final = 1000

# Attribute keys the summary is derived from (they are copied to columns on write so the
# summary can be recomputed in SQL without parsing JSON).
ROUTE_KEY: Final = "aigw.route"
REQUEST_MODEL_KEY: Final = "gen_ai.request.model"
RPC_STATUS_KEY: Final = "rpc.response.status_code"
REPLICA_KEY: Final = "service.instance.id"

# The columns `span_row` fills, in its order; both backends name their span columns so.
SPAN_ROW_COLUMNS: Final = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "start_ns",
    "end_ns",
    "status_code",
    "status_message",
    "attributes",
    "events",
    # Derived on write: true when the span has no parent or a remote one.
    "local_root",
    "route",
    "request_model",
    "rpc_status_code",
    "replica",
)
# What `stored_span` reads back, and `TraceSummary`'s fields, as SELECT lists.
STORED_SPAN_COLUMNS: Final = ", ".join(SPAN_ROW_COLUMNS[:11])
SUMMARY_COLUMNS: Final = (
    "trace_id, root_span_name, model, status, rpc_status_code, start_ns, duration_ns, "
    "span_count, replica"
)

# The summary's derivation (the contract above) in SQL both backends run: the SELECT list after
# the trace id, over `a`, the aggregate of the trace's spans (n, start_ns, end_ns, any_error,
# route, request_model), and `r`, its root (local roots first, then by start and span id);
# then the upsert that replaces a stored summary.
SUMMARY_SELECT: Final = """
    r.name,
    CASE WHEN a.route <> '' THEN a.route ELSE a.request_model END,
    CASE WHEN (CASE WHEN r.local_root
                    THEN r.status_code = 'ERROR' OR r.rpc_status_code NOT IN ('', 'OK')
                    ELSE a.any_error END)
         THEN 'ERROR' ELSE 'OK' END,
    r.rpc_status_code,
    a.start_ns,
    a.end_ns - a.start_ns,
    a.n,
    r.replica
"""
ROOT_ORDER: Final = "ORDER BY local_root DESC, start_ns, span_id LIMIT 1"
SUMMARY_UPSERT: Final = "ON CONFLICT (trace_id) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in SUMMARY_COLUMNS.split(", ")[1:]
)

# One span as stored; the element types follow SPAN_ROW_COLUMNS.
SpanRow: TypeAlias = tuple[
    str, str, str, str, str, int, int, str, str, str, str, bool, str, str, str, str
]

_HEX_DIGITS: Final = frozenset("0123456789abcdef")

# Both databases' integers are 64-bit; a protobuf Timestamp in year 9999 in nanoseconds is not.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


class TraceStoreError(Exception):
    """The trace store cannot be used for this; the message names the store and the problem."""


class TraceStoreUnavailable(TraceStoreError):
    """The store's database cannot be reached right now (transient): nothing was stored, and
    the same batch or query may be retried later."""


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
    # The root span's service.instance.id: the replica that served the request ("" unknown).
    replica: str


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


class TraceStore(Protocol):
    """What the gateway needs of a trace store (see the module docstring for the contract)."""

    def write(self, spans: Sequence[ReadableSpan]) -> int:
        """Store `spans` in one transaction and apply retention; returns spans written.

        Raises `TraceStoreUnavailable` (retry the batch later) or `TraceStoreError` (the batch
        is rejected); either way nothing of the batch is stored.
        """
        ...

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
        `status` is "OK", "ERROR" or "" for any. Raises `ValueError` naming the bad argument,
        `TraceStoreUnavailable` while a database backend cannot be reached.
        """
        ...

    def get_trace(self, trace_id: str) -> list[StoredSpan]:
        """Every stored span of `trace_id` (32 hex digits) by start time; [] when unknown.

        Raises `TraceStoreUnavailable` while a database backend cannot be reached.
        """
        ...

    @property
    def evicted(self) -> int:
        """Spans this store object evicted by retention since it was opened."""
        ...

    def close(self) -> None:
        """Release the store's connections; later calls are no-ops, later use raises."""
        ...


class SqlTraceStoreBase:
    """What both backends keep alike: the two queries over their tables, the counters and the
    context manager. A backend names its tables and its driver's parameter marker, counts into
    `_written` and `_evicted`, and supplies `_query` and `close`."""

    _TRACES_TABLE: ClassVar[str]
    _SPANS_TABLE: ClassVar[str]
    # The driver's parameter marker: "?" or "%s".
    _PLACEHOLDER: ClassVar[str]

    _written: int
    _evicted: int

    def _query(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        """The rows of one query; store errors as the contract says."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def written(self) -> int:
        """Spans this store wrote since open (a re-written span counts again)."""
        return self._written

    @property
    def evicted(self) -> int:
        """Spans this store object's retention evicted since open (with a shared database,
        other replicas' evictions are theirs)."""
        return self._evicted

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
        """See `TraceStore.list_traces`."""
        sql, params = list_query(
            self._TRACES_TABLE,
            self._PLACEHOLDER,
            model=model,
            status=status,
            start_min_ns=start_min_ns,
            start_max_ns=start_max_ns,
            min_duration_ns=min_duration_ns,
            page_size=page_size,
            page_token=page_token,
        )
        return summary_page(self._query(sql, params), page_size)

    def get_trace(self, trace_id: str) -> list[StoredSpan]:
        """See `TraceStore.get_trace`."""
        rows = self._query(
            f"SELECT {STORED_SPAN_COLUMNS} FROM {self._SPANS_TABLE}"  # noqa: S608 - constants
            f" WHERE trace_id = {self._PLACEHOLDER} ORDER BY start_ns, span_id",
            [check_trace_id(trace_id)],
        )
        return [stored_span(row) for row in rows]


# ---------------------------------------------------------------------- encoding


def span_row(span: ReadableSpan) -> SpanRow:
    """The stored form of `span`, in SPAN_ROW_COLUMNS order."""
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
    replica = span.resource.attributes.get(REPLICA_KEY)
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
        parent is None or parent.is_remote,
        _str_attr(attrs, ROUTE_KEY),
        _str_attr(attrs, REQUEST_MODEL_KEY),
        _str_attr(attrs, RPC_STATUS_KEY),
        replica if isinstance(replica, str) else "",
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
# (kept as text rather than failing the whole batch). JSON escapes control characters, so
# the text never holds a NUL (which PostgreSQL's text type refuses).
_fast_encode: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_lenient_encode: Final = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, default=str
).encode


def _encode(value: object) -> str:
    try:
        return _fast_encode(value)
    except (TypeError, ValueError):
        return _lenient_encode(value)


def stored_span(row: Sequence[Any]) -> StoredSpan:
    """A `StoredSpan` from a row selected as STORED_SPAN_COLUMNS."""
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


# ---------------------------------------------------------------------- arguments


def check_limits(max_spans: int, max_age_seconds: float) -> None:
    """`ValueError` naming the limit unless both retention limits are usable."""
    if max_spans < 1:
        raise ValueError(f"max_spans: must be at least 1, got {max_spans}")
    if not (max_age_seconds > 0 and math.isfinite(max_age_seconds)):
        raise ValueError(f"max_age_seconds: must be a positive number, got {max_age_seconds}")


# ---------------------------------------------------------------------- queries


def clamp_int64(value: int) -> int:
    return min(max(value, INT64_MIN), INT64_MAX)


def check_trace_id(trace_id: str) -> str:
    """`trace_id` in its stored form (lower case); `ValueError` unless 32 hex digits."""
    trace_id = trace_id.lower()
    if len(trace_id) != 32 or not _HEX_DIGITS.issuperset(trace_id):
        raise ValueError(f"trace_id: must be 32 hex digits, got {trace_id!r}")
    return trace_id


def list_query(
    table: str,
    placeholder: str,
    *,
    model: str,
    status: str,
    start_min_ns: int | None,
    start_max_ns: int | None,
    min_duration_ns: int,
    page_size: int,
    page_token: str,
) -> tuple[str, list[object]]:
    """Check `list_traces`' arguments; the SELECT for one page (plus one row, to tell whether
    another page follows) over summary table `table`, and its parameters.

    `placeholder` is the driver's parameter marker ("?" or "%s"). Raises `ValueError` naming
    the bad argument.
    """
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size: must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
    if status not in ("", "OK", "ERROR"):
        raise ValueError(f'status: must be "OK", "ERROR" or "", got {status!r}')
    where: list[str] = []
    params: list[object] = []
    if model:
        where.append(f"model = {placeholder}")
        params.append(model)
    if status:
        where.append(f"status = {placeholder}")
        params.append(status)
    if start_min_ns is not None:
        where.append(f"start_ns >= {placeholder}")
        params.append(clamp_int64(start_min_ns))
    if start_max_ns is not None:
        where.append(f"start_ns < {placeholder}")
        params.append(clamp_int64(start_max_ns))
    if min_duration_ns > 0:
        where.append(f"duration_ns >= {placeholder}")
        params.append(clamp_int64(min_duration_ns))
    if page_token:
        where.append(f"(start_ns, trace_id) < ({placeholder}, {placeholder})")
        params.extend(decode_page_token(page_token))
    sql = f"SELECT {SUMMARY_COLUMNS} FROM {table}"  # noqa: S608 - fixed fragments only
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY start_ns DESC, trace_id DESC LIMIT {placeholder}"
    params.append(page_size + 1)
    return sql, params


def summary_page(rows: Sequence[Sequence[Any]], page_size: int) -> tuple[list[TraceSummary], str]:
    """The page and next-page token from `list_query`'s rows."""
    page = [TraceSummary(*row) for row in rows[:page_size]]
    token = ""
    if len(rows) > page_size:
        last = page[-1]
        token = encode_page_token(last.start_ns, last.trace_id)
    return page, token


def encode_page_token(start_ns: int, trace_id: str) -> str:
    raw = f"{start_ns}:{trace_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_page_token(token: str) -> tuple[int, str]:
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        start_text, trace_id = raw.decode("ascii").split(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("page_token: malformed; pass a previous response's token") from None
    well_formed = (
        start_text.isdigit()
        and int(start_text) <= INT64_MAX
        and len(trace_id) == 32
        and _HEX_DIGITS.issuperset(trace_id)
    )
    if not well_formed:
        raise ValueError("page_token: malformed; pass a previous response's token")
    return int(start_text), trace_id
