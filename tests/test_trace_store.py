"""The embedded trace store and the span processor feeding it: real SDK spans, real SQLite."""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)

from gateway.telemetry import trace_store
from gateway.telemetry.trace_store import (
    StoredEvent,
    TraceStore,
    TraceStoreError,
    TraceSummary,
)
from gateway.telemetry.trace_store_processor import TraceStoreProcessor

MS = 1_000_000
S = 1_000 * MS
# Recent enough that a one-day max age keeps everything the tests write.
NOW = time.time_ns()
DAY = 86_400.0


class _Collect(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


class SpanMaker:
    """Builds real SDK spans with chosen times, kinds and parents (no global provider)."""

    def __init__(self) -> None:
        self.provider = TracerProvider(shutdown_on_exit=False)
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


def summary(store: TraceStore, trace_id: str) -> TraceSummary:
    found = [t for t in all_traces(store) if t.trace_id == trace_id]
    assert len(found) == 1, found
    return found[0]


def all_traces(store: TraceStore, page_size: int = 1000, **filters: object) -> list[TraceSummary]:
    out: list[TraceSummary] = []
    token = ""
    while True:
        page, token = store.list_traces(page_size=page_size, page_token=token, **filters)
        out.extend(page)
        if not token:
            return out


def open_store(path: Path, *, max_spans: int = 100_000, max_age: float = DAY) -> TraceStore:
    return TraceStore.open(path, max_spans=max_spans, max_age_seconds=max_age)


@pytest.fixture
def maker() -> SpanMaker:
    return SpanMaker()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "traces" / "traces.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[TraceStore]:
    s = open_store(db_path)
    yield s
    s.close()


# ---------------------------------------------------------------------------- summaries


def test_summary_is_right_with_children_first_and_across_batches(store, maker):
    t0 = NOW - 10 * S
    server = maker.span(
        "aigw.v1.Completion/Complete",
        start=t0,
        end=t0 + 100 * MS,
        kind=SpanKind.SERVER,
        attrs={"aigw.route": "gpt-test", "rpc.response.status_code": "OK"},
    )
    first = maker.span(
        "chat a",
        start=t0 + 10 * MS,
        end=t0 + 40 * MS,
        parent=server,
        kind=SpanKind.CLIENT,
        attrs={"gen_ai.request.model": "upstream-a"},
    )
    failed_retry = maker.span(
        "chat b",
        start=t0 + 50 * MS,
        end=t0 + 90 * MS,
        parent=server,
        kind=SpanKind.CLIENT,
        attrs={"gen_ai.request.model": "upstream-a"},
        error="upstream 503",
    )
    tid = trace_id_of(server)

    assert store.write([failed_retry]) == 1
    s = summary(store, tid)
    # Root not here yet: the earliest span stands in, any ERROR makes the trace ERROR.
    assert (s.root_span_name, s.model, s.status, s.span_count) == (
        "chat b",
        "upstream-a",
        "ERROR",
        1,
    )
    assert (s.start_ns, s.duration_ns) == (t0 + 50 * MS, 40 * MS)

    store.write([first])
    s = summary(store, tid)
    assert (s.root_span_name, s.span_count, s.start_ns) == ("chat a", 2, t0 + 10 * MS)

    store.write([server])
    # The root's own status decides once it is here: the request recovered from the retry.
    assert summary(store, tid) == TraceSummary(
        trace_id=tid,
        root_span_name="aigw.v1.Completion/Complete",
        model="gpt-test",
        status="OK",
        rpc_status_code="OK",
        start_ns=t0,
        duration_ns=100 * MS,
        span_count=3,
    )

    # A re-written span is stored once.
    store.write([server, first])
    assert summary(store, tid).span_count == 3
    assert store.span_count == 3
    assert len(store.get_trace(tid)) == 3


def test_rewritten_span_replaces_the_stored_one(store, maker):
    client, server = maker.request(start=NOW - S, duration=100 * MS)
    store.write([client, server])
    failed = ReadableSpan(
        name=server.name,
        context=server.context,
        parent=server.parent,
        kind=server.kind,
        attributes={**server.attributes, "rpc.response.status_code": "INTERNAL"},
        status=Status(StatusCode.ERROR, "late failure"),
        start_time=server.start_time,
        end_time=server.end_time,
    )
    # Twice in one batch as well: the later copy wins, and still counts once.
    store.write([server, failed])
    tid = trace_id_of(server)
    s = summary(store, tid)
    assert (s.status, s.rpc_status_code, s.span_count) == ("ERROR", "INTERNAL", 2)
    root = store.get_trace(tid)[0]
    assert (root.status_code, root.status_message) == ("ERROR", "late failure")
    assert (store.span_count, store.written) == (2, 4)


def test_root_error_decides_status_and_rpc_code(store, maker):
    spans = maker.request(start=NOW - S, duration=200 * MS, code="UNAVAILABLE", error=True)
    store.write(spans)
    s = summary(store, trace_id_of(spans[0]))
    assert (s.status, s.rpc_status_code, s.model) == ("ERROR", "UNAVAILABLE", "gpt-test")


def test_summary_same_for_every_arrival_order(db_path, maker):
    t0 = NOW - 5 * S
    spans = maker.request(start=t0, duration=300 * MS, code="NOT_FOUND", error=True)
    spans.append(maker.span("validate", start=t0 + 1 * MS, end=t0 + 2 * MS, parent=spans[1]))
    expected = None
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1]):
        with open_store(db_path.with_name(f"{order}.db")) as s:
            for i in order:
                s.write([spans[i]])
            got = summary(s, trace_id_of(spans[0]))
        expected = expected or got
        assert got == expected
    assert expected.root_span_name == "aigw.v1.Completion/Complete"
    assert (expected.status, expected.rpc_status_code) == ("ERROR", "NOT_FOUND")


def test_span_with_remote_parent_is_the_root(store, maker):
    remote = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    t0 = NOW - 3 * S
    server = maker.span(
        "aigw.v1.Completion/Complete",
        start=t0,
        end=t0 + 50 * MS,
        parent=remote,
        kind=SpanKind.SERVER,
        attrs={"aigw.route": "r1", "rpc.response.status_code": "OK"},
    )
    # Starts before the server span (clock skew, or a span opened by an interceptor): the
    # "earliest span" fallback would pick it, the local-root rule must not.
    early_child = maker.span(
        "chat r1", start=t0 - 5 * MS, end=t0 + 10 * MS, parent=server, kind=SpanKind.CLIENT
    )
    store.write([early_child, server])
    tid = "0af7651916cd43dd8448eb211c80319c"
    s = summary(store, tid)
    assert s.root_span_name == "aigw.v1.Completion/Complete"
    assert s.rpc_status_code == "OK"
    assert (s.start_ns, s.duration_ns) == (t0 - 5 * MS, 55 * MS)
    stored = {sp.name: sp for sp in store.get_trace(tid)}
    assert stored["aigw.v1.Completion/Complete"].parent_span_id == "b7ad6b7169203331"
    assert stored["chat r1"].parent_span_id == span_id_of(server)


def test_model_falls_back_to_request_model_then_empty(store, maker):
    only_genai = maker.span(
        "chat x", start=NOW - S, end=NOW - S + MS, attrs={"gen_ai.request.model": "m-1"}
    )
    bare = maker.span("work", start=NOW - S, end=NOW - S + MS, attrs={"n": 1})
    store.write([only_genai, bare])
    assert summary(store, trace_id_of(only_genai)).model == "m-1"
    s = summary(store, trace_id_of(bare))
    assert (s.model, s.rpc_status_code, s.status) == ("", "", "OK")


# ---------------------------------------------------------------------------- listing


@pytest.fixture
def four_traces(store, maker) -> dict[str, str]:
    specs = {
        "A": dict(start=NOW - 50 * S, duration=100 * MS, route="alpha"),
        "B": dict(start=NOW - 40 * S, duration=2 * S, route="beta", code="INTERNAL", error=True),
        "C": dict(start=NOW - 30 * S, duration=500 * MS, route="alpha", code="X", error=True),
        "D": dict(start=NOW - 20 * S, duration=3 * S, route="alpha"),
    }
    ids = {}
    for label, spec in specs.items():
        spans = maker.request(**spec)
        store.write(spans)
        ids[trace_id_of(spans[0])] = label
    return ids


def labels(store, ids, **filters) -> list[str]:
    return [ids[t.trace_id] for t in all_traces(store, **filters)]


def test_list_traces_filters(store, four_traces):
    ids = four_traces
    assert labels(store, ids) == ["D", "C", "B", "A"]
    assert labels(store, ids, model="alpha") == ["D", "C", "A"]
    assert labels(store, ids, model="gpt-nope") == []
    assert labels(store, ids, status="ERROR") == ["C", "B"]
    assert labels(store, ids, status="OK") == ["D", "A"]
    assert labels(store, ids, model="alpha", status="ERROR") == ["C"]
    # start_min is inclusive, start_max exclusive ("started before").
    assert labels(store, ids, start_min_ns=NOW - 40 * S) == ["D", "C", "B"]
    assert labels(store, ids, start_max_ns=NOW - 30 * S) == ["B", "A"]
    assert labels(store, ids, start_min_ns=NOW - 40 * S, start_max_ns=NOW - 20 * S) == ["C", "B"]
    assert labels(store, ids, min_duration_ns=S) == ["D", "B"]
    assert labels(store, ids, min_duration_ns=500 * MS, status="ERROR") == ["C", "B"]
    # Bounds from protobuf Timestamps can exceed SQLite's 64-bit integers (year 9999).
    year_9999_ns = 253_402_300_799 * S
    assert labels(store, ids, start_max_ns=year_9999_ns, start_min_ns=-year_9999_ns) == [
        "D",
        "C",
        "B",
        "A",
    ]
    assert labels(store, ids, min_duration_ns=year_9999_ns) == []


def test_list_traces_rejects_bad_arguments(store, four_traces):
    with pytest.raises(ValueError, match=r"^status:"):
        store.list_traces(status="FAILED")
    with pytest.raises(ValueError, match=r"^page_size:"):
        store.list_traces(page_size=0)
    with pytest.raises(ValueError, match=r"^page_size:"):
        store.list_traces(page_size=1001)


@pytest.mark.parametrize(
    "token",
    [
        "not base64!",
        "eA",
        "MTIzOnh5eg",  # "123:xyz"
        "YWJjOjBhZjc2NTE5MTZjZDQzZGQ4NDQ4ZWIyMTFjODAzMTlj",  # "abc:<trace id>"
        # 10**30 as the start: well-formed but beyond SQLite's integers
        "MTAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDowYWY3NjUxOTE2Y2Q0M2RkODQ0OGViMjExYzgwMzE5Yw",
        "====",
    ],
)
def test_malformed_page_token(store, four_traces, token):
    with pytest.raises(ValueError, match=r"^page_token:"):
        store.list_traces(page_token=token)


def test_pagination_with_equal_start_times(store, maker):
    starts = [NOW - 9 * S, NOW - 5 * S, NOW - 5 * S, NOW - 5 * S, NOW - 2 * S, NOW - 2 * S, NOW]
    expected = []
    for start in starts:
        root = maker.span("r", start=start, end=start + MS)
        store.write([root])
        expected.append((start, trace_id_of(root)))
    expected.sort(reverse=True)

    pages = []
    token = ""
    while True:
        page, token = store.list_traces(page_size=3, page_token=token)
        pages.append([(t.start_ns, t.trace_id) for t in page])
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [item for page in pages for item in page] == expected
    # A page that ends exactly at the end says so: no token to an empty page.
    page, token = store.list_traces(page_size=7)
    assert len(page) == 7
    assert token == ""


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    traces=st.lists(st.tuples(st.integers(0, 6), st.booleans()), max_size=30),
    page_size=st.integers(1, 9),
    status=st.sampled_from(["", "OK", "ERROR"]),
)
def test_pages_concatenate_to_the_full_sorted_list(maker, traces, page_size, status):
    expected = []
    spans = []
    for offset, failed in traces:
        start = NOW - 100 * S + offset * MS  # few distinct starts: ties on start_ns are common
        root = maker.span("r", start=start, end=start + MS, error="x" if failed else None)
        spans.append(root)
        if status in ("", "ERROR" if failed else "OK"):
            expected.append((start, trace_id_of(root)))
    expected.sort(reverse=True)
    random.Random(len(spans)).shuffle(spans)
    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp) / "t.db") as store:
        # Arbitrary batching must not matter either.
        for i in range(0, len(spans), 4):
            store.write(spans[i : i + 4])
        got = []
        token = ""
        pages = 0
        while True:
            page, token = store.list_traces(page_size=page_size, status=status, page_token=token)
            pages += 1
            assert len(page) <= page_size
            assert token == "" or len(page) == page_size
            got.extend((t.start_ns, t.trace_id) for t in page)
            if not token:
                break
    assert got == expected
    assert pages == max(1, -(-len(expected) // page_size))


# ---------------------------------------------------------------------------- spans


def test_get_trace_orders_spans_and_keeps_types_and_events(store, maker):
    t0 = NOW - 7 * S
    root = maker.span(
        "aigw.v1.Completion/Complete",
        start=t0,
        end=t0 + 90 * MS,
        kind=SpanKind.SERVER,
        attrs={
            "s": "text ✓",
            "b": True,
            "i": 42,
            "f": 0.5,
            "whole_float": 2.0,
            "ss": ("a", "b"),
            "ii": (1, 2, 3),
            "ff": (1.5, 2.0),
            "bb": (True, False),
        },
        error="upstream timed out",
        events=[("exception", t0 + 80 * MS, {"exception.type": "Timeout", "attempt": 2})],
    )
    later = maker.span("chat z", start=t0 + 30 * MS, end=t0 + 60 * MS, parent=root)
    earlier = maker.span(
        "chat y", start=t0 + 10 * MS, end=t0 + 20 * MS, parent=root, kind=SpanKind.CLIENT
    )
    store.write([later])
    store.write([root, earlier])

    spans = store.get_trace(trace_id_of(root))
    assert [s.name for s in spans] == ["aigw.v1.Completion/Complete", "chat y", "chat z"]
    r = spans[0]
    assert (r.kind, r.status_code, r.status_message) == ("SERVER", "ERROR", "upstream timed out")
    assert (r.start_ns, r.end_ns, r.parent_span_id) == (t0, t0 + 90 * MS, "")
    assert r.span_id == span_id_of(root)
    assert r.attributes == {
        "s": "text ✓",
        "b": True,
        "i": 42,
        "f": 0.5,
        "whole_float": 2.0,
        "ss": ["a", "b"],
        "ii": [1, 2, 3],
        "ff": [1.5, 2.0],
        "bb": [True, False],
    }
    # Equality above would accept 1 == True and 2 == 2.0; the types must survive too.
    assert type(r.attributes["b"]) is bool
    assert type(r.attributes["i"]) is int
    assert type(r.attributes["whole_float"]) is float
    assert [type(v) for v in r.attributes["bb"]] == [bool, bool]
    assert r.events == [
        StoredEvent("exception", t0 + 80 * MS, {"exception.type": "Timeout", "attempt": 2})
    ]
    assert (spans[1].kind, spans[1].status_code, spans[1].events) == ("CLIENT", "UNSET", [])
    assert spans[1].parent_span_id == r.span_id


def test_get_trace_unknown_and_malformed(store):
    assert store.get_trace("0" * 32) == []
    assert store.get_trace("A" * 32) == []  # upper case is accepted
    with pytest.raises(ValueError, match=r"^trace_id:"):
        store.get_trace("xyz")


# ---------------------------------------------------------------------------- retention


def test_retention_by_count_evicts_whole_oldest_traces(db_path, maker):
    with open_store(db_path, max_spans=10) as store:
        ids: list[str] = []
        batches: list[list[ReadableSpan]] = []
        for i in range(5):  # trace i starts before trace i + 1
            start = NOW - (50 - i) * S
            root = maker.span("r", start=start, end=start + 10 * MS)
            kids = [
                maker.span(f"c{k}", start=start + k * MS, end=start + 2 * MS, parent=root)
                for k in (1, 2)
            ]
            ids.append(trace_id_of(root))
            batches.append([*kids, root])
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


def test_retention_by_age(db_path, maker):
    with open_store(db_path, max_age=3600) as store:
        old = maker.request(start=NOW - 2 * 3600 * S, duration=S)
        new = maker.request(start=NOW - 60 * S, duration=S)
        store.write(old + new)
        assert store.enforce_retention() == 2
        assert [t.trace_id for t in all_traces(store)] == [trace_id_of(new[0])]
        assert store.get_trace(trace_id_of(old[0])) == []

        assert store.enforce_retention(now_ns=NOW + 2 * 3600 * S) == 2
        assert all_traces(store) == []
        assert (store.evicted, store.span_count) == (4, 0)


def test_write_applies_age_retention(db_path, maker, monkeypatch):
    # Writes check ages at most once a second; make every write due so the test needn't wait.
    monkeypatch.setattr(trace_store, "_AGE_CHECK_INTERVAL_NS", 0)
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


def test_closed_store_raises_store_error(db_path, maker):
    store = open_store(db_path)
    store.close()
    store.close()
    with pytest.raises(TraceStoreError, match="closed"):
        store.list_traces()
    with pytest.raises(TraceStoreError, match="closed"):
        store.write(maker.request(start=NOW, duration=MS))


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


# ---------------------------------------------------------------------------- processor


class StalledStore(TraceStore):
    """A store whose writes wait until released: a disk that has stopped answering."""

    entered: threading.Event
    release: threading.Event

    def write(self, spans: Sequence[ReadableSpan]) -> int:
        self.entered.set()
        assert self.release.wait(10)
        return super().write(spans)


class FailingStore:
    def __init__(self) -> None:
        self.message = "database or disk is full"

    def write(self, spans: Sequence[ReadableSpan]) -> int:
        raise TraceStoreError(f"trace store /x/traces.db: write failed: {self.message}")


class RecordingStore(TraceStore):
    batch_sizes: list[int]

    def write(self, spans: Sequence[ReadableSpan]) -> int:
        self.batch_sizes.append(len(spans))
        return super().write(spans)


@pytest.fixture
def stalled(db_path) -> Iterator[StalledStore]:
    s = StalledStore.open(db_path, max_spans=100_000, max_age_seconds=DAY)
    s.entered = threading.Event()
    s.release = threading.Event()
    yield s
    s.release.set()
    s.close()


def pipeline(store, **kwargs) -> tuple[TraceStoreProcessor, TracerProvider]:
    processor = TraceStoreProcessor(store, **kwargs)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return processor, provider


def emit(provider: TracerProvider, n: int, name: str = "op") -> None:
    tracer = provider.get_tracer("test")
    for _ in range(n):
        tracer.start_span(name).end()


def test_on_end_never_blocks_on_a_stalled_writer_and_drops_beyond_capacity(stalled):
    processor, provider = pipeline(stalled, capacity=100, max_batch=10, flush_interval=0.01)
    emit(provider, 1)
    assert stalled.entered.wait(5)  # the writer now holds that span and is stuck

    started = time.monotonic()
    emit(provider, 150)
    assert time.monotonic() - started < 1.0
    assert (processor.queued, processor.pending, processor.dropped) == (101, 100, 50)
    assert processor.written == 0

    stalled.release.set()
    assert processor.force_flush(5_000)
    assert (processor.written, processor.dropped, processor.failed) == (101, 50, 0)
    assert stalled.span_count == 101
    processor.shutdown()


def test_force_flush_times_out_on_a_stalled_writer(stalled):
    processor, provider = pipeline(stalled, flush_interval=0.01)
    emit(provider, 1)
    assert stalled.entered.wait(5)
    emit(provider, 1)
    started = time.monotonic()
    assert processor.force_flush(100) is False
    assert time.monotonic() - started < 2.0
    stalled.release.set()
    assert processor.force_flush(5_000) is True
    assert processor.written == 2
    processor.shutdown()


def test_force_flush_writes_without_waiting_for_the_interval(store):
    processor, provider = pipeline(store, flush_interval=30.0)
    emit(provider, 5)
    started = time.monotonic()
    assert processor.force_flush(5_000)
    assert time.monotonic() - started < 2.0
    assert (store.span_count, processor.written, processor.queued) == (5, 5, 5)
    assert processor.force_flush(10)  # nothing pending: immediately true
    processor.shutdown()


def test_flush_interval_writes_a_partial_batch(store):
    processor, provider = pipeline(store, flush_interval=0.05)
    emit(provider, 3)
    deadline = time.monotonic() + 5
    while processor.written < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.span_count == 3
    processor.shutdown()


def test_batches_are_bounded(db_path):
    store = RecordingStore.open(db_path, max_spans=100_000, max_age_seconds=DAY)
    store.batch_sizes = []
    try:
        processor, provider = pipeline(store, max_batch=64, flush_interval=0.05)
        emit(provider, 1000)
        assert processor.force_flush(10_000)
        assert sum(store.batch_sizes) == 1000
        assert max(store.batch_sizes) <= 64
        processor.shutdown()
    finally:
        store.close()


def test_shutdown_drains_is_idempotent_and_leaves_the_store_open(store):
    processor, provider = pipeline(store, flush_interval=30.0)
    emit(provider, 20)
    processor.shutdown()
    assert store.span_count == 20
    assert processor.written == 20
    processor.shutdown()
    emit(provider, 1)  # after shutdown: counted, not queued, not raised
    assert (processor.dropped, processor.queued) == (1, 20)
    assert not processor._thread.is_alive()
    assert len(all_traces(store)) == 20  # the processor did not close what it does not own


def test_shutdown_before_any_span(store):
    processor = TraceStoreProcessor(store)
    started = time.monotonic()
    processor.shutdown()
    processor.shutdown()
    assert time.monotonic() - started < 2.0
    assert not processor._thread.is_alive()
    assert processor.force_flush(10)


def test_shutdown_drain_is_bounded(stalled):
    processor, provider = pipeline(stalled, flush_interval=0.01, shutdown_timeout=0.2)
    emit(provider, 1)
    assert stalled.entered.wait(5)
    emit(provider, 5)

    def release_after_the_drain_deadline() -> None:
        while not processor._stopping:
            time.sleep(0.005)
        time.sleep(0.4)
        stalled.release.set()

    releaser = threading.Thread(target=release_after_the_drain_deadline)
    releaser.start()
    started = time.monotonic()
    processor.shutdown()
    assert time.monotonic() - started < 3.0
    releaser.join()
    # The in-flight span was written; the five behind it ran out of drain time.
    assert (processor.written, processor.dropped) == (1, 5)


def test_write_errors_are_counted_and_logged_once_per_distinct_error(caplog):
    store = FailingStore()
    # Only force_flush starts a write, so each round is exactly one batch.
    processor, provider = pipeline(store, flush_interval=30.0)
    with caplog.at_level(logging.ERROR, logger="gateway.telemetry.trace_store_processor"):
        for _ in range(3):
            emit(provider, 2)
            assert processor.force_flush(5_000) is False
        store.message = "disk I/O error"
        emit(provider, 1)
        processor.force_flush(5_000)
    assert (processor.write_errors, processor.failed, processor.written) == (4, 7, 0)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "database or disk is full" in messages[0]
    assert "disk I/O error" in messages[1]
    processor.shutdown()


def test_many_threads_each_span_written_exactly_once(store):
    processor, provider = pipeline(store, max_batch=64, flush_interval=0.01)
    threads, per_thread = 8, 300
    barrier = threading.Barrier(threads)

    def worker(i: int) -> None:
        tracer = provider.get_tracer("test")
        barrier.wait()
        for k in range(per_thread):
            tracer.start_span(f"t{i}-{k}").end()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    names = [f"t{i}-{k}" for i in range(threads) for k in range(per_thread)]
    assert processor.force_flush(10_000)
    total = threads * per_thread
    assert (processor.queued, processor.written, processor.dropped) == (total, total, 0)
    # `written` counts re-writes too, so equal totals mean no span went to the store twice.
    assert (store.written, store.span_count) == (total, total)
    listed = all_traces(store, page_size=500)
    assert sorted(t.root_span_name for t in listed) == sorted(names)
    processor.shutdown()
