"""Helpers for the trace store tests (no tests here): real SDK spans with chosen times and
parents, listing everything, and opening stores of either backend."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    set_span_in_context,
)

from gateway.telemetry.trace_store import TraceStore, TraceSummary
from gateway.telemetry.trace_store_postgres import PostgresTraceStore
from gateway.telemetry.trace_store_sqlite import SqliteTraceStore

# Not a test module, though its name matches the trace store tests'.
__test__ = False

MS = 1_000_000
S = 1_000 * MS
DAY = 86_400.0
# Recent enough that a one-day max age keeps everything the tests write.
NOW = time.time_ns()


class _Collect(SpanProcessor):
    def on_end(self, span: ReadableSpan) -> None:
        pass


class SpanMaker:
    """Builds real SDK spans with chosen times, kinds and parents (no global provider). Their
    resource holds only `replica` as service.instance.id, or nothing (the SDK's default
    resource would add a random one)."""

    def __init__(self, replica: str | None = None) -> None:
        resource = Resource({"service.instance.id": replica} if replica else {})
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.provider.add_span_processor(_Collect())
        self.tracer = self.provider.get_tracer("test")

    def span(
        self,
        name: str,
        *,
        start: int,
        end: int,
        parent: Span | SpanContext | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attrs: dict | None = None,
        error: str | None = None,
        events: Sequence[tuple[str, int, dict]] = (),
    ) -> ReadableSpan:
        if isinstance(parent, SpanContext):
            ctx = set_span_in_context(NonRecordingSpan(parent))
        elif parent is not None:
            ctx = set_span_in_context(parent)
        else:
            ctx = None
        span = self.tracer.start_span(
            name, context=ctx, kind=kind, attributes=attrs, start_time=start
        )
        for ev_name, ev_time, ev_attrs in events:
            span.add_event(ev_name, ev_attrs, timestamp=ev_time)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end)
        assert isinstance(span, ReadableSpan)
        return span

    def request(
        self,
        *,
        start: int,
        duration: int,
        route: str = "gpt-test",
        code: str = "OK",
        error: bool = False,
    ) -> list[ReadableSpan]:
        """A gateway request: a SERVER span and one CLIENT child, child first (end order)."""
        server = self.span(
            "aigw.v1.Completion/Complete",
            start=start,
            end=start + duration,
            kind=SpanKind.SERVER,
            attrs={"aigw.route": route, "rpc.response.status_code": code},
            error=code if error else None,
        )
        client = self.span(
            f"chat {route}-upstream",
            start=start + duration // 10,
            end=start + duration // 2,
            parent=server,
            kind=SpanKind.CLIENT,
            attrs={"gen_ai.request.model": f"{route}-upstream"},
        )
        return [client, server]


def trace_id_of(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


def span_id_of(span: ReadableSpan) -> str:
    return format(span.context.span_id, "016x")


def oldest_first_traces(maker: SpanMaker) -> tuple[list[str], list[list[ReadableSpan]]]:
    """Five three-span traces, trace i starting before trace i + 1: their ids, and each one's
    spans as a batch (children first)."""
    ids: list[str] = []
    batches: list[list[ReadableSpan]] = []
    for i in range(5):
        start = NOW - (50 - i) * S
        root = maker.span("r", start=start, end=start + 10 * MS)
        kids = [
            maker.span(f"c{k}", start=start + k * MS, end=start + 2 * MS, parent=root)
            for k in (1, 2)
        ]
        ids.append(trace_id_of(root))
        batches.append([*kids, root])
    return ids, batches


def all_traces(store: TraceStore, page_size: int = 1000, **filters: Any) -> list[TraceSummary]:
    out: list[TraceSummary] = []
    token = ""
    while True:
        page, token = store.list_traces(page_size=page_size, page_token=token, **filters)
        out.extend(page)
        if not token:
            return out


def summary(store: TraceStore, trace_id: str) -> TraceSummary:
    found = [t for t in all_traces(store) if t.trace_id == trace_id]
    assert len(found) == 1, found
    return found[0]


def stored_span_total(store: TraceStore) -> int:
    return sum(t.span_count for t in all_traces(store))


def reset_postgres(conn: psycopg.Connection) -> None:
    """Empty the trace tables of `conn`'s database (much cheaper than a new database, and
    DELETE than TRUNCATE for tables this small)."""
    if conn.execute("SELECT to_regclass('aigw_traces')").fetchone() == (None,):
        return
    conn.execute(
        "DELETE FROM aigw_spans; DELETE FROM aigw_traces; "
        "UPDATE aigw_trace_retention SET last_run = '-infinity'"
    )


def reset_postgres_at(url: str) -> None:
    """`reset_postgres` over a connection of its own (for tests that stop the server)."""
    with psycopg.connect(url, autocommit=True) as conn:
        reset_postgres(conn)


class Stores:
    """Opens stores of one backend over one location (a file, or a database) for one test,
    and closes them at the end."""

    def __init__(
        self, backend: str, tmp_path: Path, url: str = "", admin: psycopg.Connection | None = None
    ) -> None:
        self.backend = backend
        self._tmp_path = tmp_path
        self._url = url
        # An autocommit connection to the PostgreSQL database, for emptying it.
        self._admin = admin
        self._opened: list[Any] = []
        self._limits: dict[str, Any] | None = None
        self._locations = 0
        self.path = tmp_path / "traces.db"

    def open(
        self, *, max_spans: int = 100_000, max_age: float = DAY, replica: str = "r-test"
    ) -> Any:
        if self.backend == "sqlite":
            store: Any = SqliteTraceStore.open(
                self.path, max_spans=max_spans, max_age_seconds=max_age
            )
        else:
            store = PostgresTraceStore.open(
                self._url, max_spans=max_spans, max_age_seconds=max_age, replica=replica
            )
        self._opened.append(store)
        return store

    def fresh(self, **limits: Any) -> Any:
        """A store over an empty location: a new file, or the one database emptied. For
        PostgreSQL that is the last store opened, if it has the same limits (connecting
        costs more than all else in a property test's example), else a new one; its counters
        carry on."""
        if self.backend == "sqlite":
            self._locations += 1
            self.path = self._tmp_path / f"traces-{self._locations}.db"
            return self.open(**limits)
        assert self._admin is not None
        reset_postgres(self._admin)
        if self._opened and self._limits == limits:
            return self._opened[-1]
        self._limits = limits
        return self.open(**limits)

    def close(self) -> None:
        for store in self._opened:
            store.close()
