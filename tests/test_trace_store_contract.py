"""The trace store contract, held by both backends: real SDK spans into real SQLite and a real
PostgreSQL. Every test here runs once per backend; what only one backend has (files, schema
versions, many replicas, outages) is tested in that backend's own file.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import (
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from gateway.telemetry.trace_store import StoredEvent, TraceStoreError, TraceSummary
from tests.postgres import PostgresCluster
from tests.test_trace_store_support import (
    MS,
    NOW,
    S,
    SpanMaker,
    Stores,
    all_traces,
    oldest_first_traces,
    reset_postgres,
    span_id_of,
    stored_span_total,
    summary,
    trace_id_of,
)


@pytest.fixture(scope="module")
def module_database(pg_cluster: PostgresCluster) -> Iterator[tuple[str, psycopg.Connection]]:
    """One database for this module's PostgreSQL runs, emptied before each test, and a
    connection to empty it with."""
    url = pg_cluster.create_database("contract")
    with psycopg.connect(url, autocommit=True) as admin:
        yield url, admin


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    if request.param == "postgres":
        url, admin = request.getfixturevalue("module_database")
        reset_postgres(admin)
        s = Stores("postgres", tmp_path, url, admin)
    else:
        s = Stores("sqlite", tmp_path)
    yield s
    s.close()


@pytest.fixture
def store(stores: Stores) -> Any:
    return stores.open()


@pytest.fixture
def maker() -> SpanMaker:
    return SpanMaker()


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
        replica="",
    )

    # A re-written span is stored once.
    store.write([server, first])
    assert summary(store, tid).span_count == 3
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
    assert store.write([server, failed]) == 2
    tid = trace_id_of(server)
    s = summary(store, tid)
    assert (s.status, s.rpc_status_code, s.span_count) == ("ERROR", "INTERNAL", 2)
    root = store.get_trace(tid)[0]
    assert (root.status_code, root.status_message) == ("ERROR", "late failure")
    assert (stored_span_total(store), store.written) == (2, 4)


def test_root_error_decides_status_and_rpc_code(store, maker):
    spans = maker.request(start=NOW - S, duration=200 * MS, code="UNAVAILABLE", error=True)
    store.write(spans)
    s = summary(store, trace_id_of(spans[0]))
    assert (s.status, s.rpc_status_code, s.model) == ("ERROR", "UNAVAILABLE", "gpt-test")


def test_summary_same_for_every_arrival_order(stores, maker):
    t0 = NOW - 5 * S
    spans = maker.request(start=t0, duration=300 * MS, code="NOT_FOUND", error=True)
    spans.append(maker.span("validate", start=t0 + 1 * MS, end=t0 + 2 * MS, parent=spans[1]))
    expected = None
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1]):
        s = stores.fresh()
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
    assert (s.model, s.rpc_status_code, s.status, s.replica) == ("", "", "OK", "")


def test_replica_is_the_roots_service_instance(store):
    # One trace continued across two replicas: a caller's request to replica A, whose span
    # context a second request to replica B carries as its remote parent.
    a, b = SpanMaker(replica="replica-a"), SpanMaker(replica="replica-b")
    t0 = NOW - 4 * S
    root_a = a.span("aigw.v1.Completion/Complete", start=t0, end=t0 + 90 * MS)
    remote = SpanContext(root_a.context.trace_id, 0x1234, is_remote=True, trace_flags=TraceFlags(1))
    root_b = b.span(
        "aigw.v1.Completion/Complete", start=t0 + 5 * MS, end=t0 + 9 * MS, parent=remote
    )
    child_b = b.span("chat b", start=t0 + 1 * MS, end=t0 + 8 * MS, parent=root_b)
    tid = trace_id_of(root_a)

    store.write([child_b])
    assert summary(store, tid).replica == "replica-b"  # no root yet: the earliest span's
    store.write([root_b])
    assert summary(store, tid).replica == "replica-b"
    store.write([root_a])
    # Two local roots: the first to start is the trace's root.
    s = summary(store, tid)
    assert (s.replica, s.span_count, s.start_ns) == ("replica-a", 3, t0)


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
    # Bounds from protobuf Timestamps can exceed the databases' 64-bit integers (year 9999).
    year_9999_ns = 253_402_300_799 * S
    assert labels(store, ids, start_max_ns=year_9999_ns, start_min_ns=-year_9999_ns) == [
        "D",
        "C",
        "B",
        "A",
    ]
    assert labels(store, ids, min_duration_ns=year_9999_ns) == []


def test_list_traces_rejects_bad_arguments(store):
    with pytest.raises(ValueError, match=r"^status:"):
        store.list_traces(status="FAILED")
    with pytest.raises(ValueError, match=r"^page_size:"):
        store.list_traces(page_size=0)
    with pytest.raises(ValueError, match=r"^page_size:"):
        store.list_traces(page_size=1001)
    for token in [
        "not base64!",
        "eA",
        "MTIzOnh5eg",  # "123:xyz"
        "YWJjOjBhZjc2NTE5MTZjZDQzZGQ4NDQ4ZWIyMTFjODAzMTlj",  # "abc:<trace id>"
        # 10**30 as the start: well-formed but beyond 64-bit integers
        "MTAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDowYWY3NjUxOTE2Y2Q0M2RkODQ0OGViMjExYzgwMzE5Yw",
        "====",
    ]:
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
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    traces=st.lists(st.tuples(st.integers(0, 6), st.booleans()), max_size=30),
    page_size=st.integers(1, 9),
    status=st.sampled_from(["", "OK", "ERROR"]),
)
def test_pages_concatenate_to_the_full_sorted_list(stores, maker, traces, page_size, status):
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
    store = stores.fresh()
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
            "s": "text ✓ \t\n\\ \x00",
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
        "s": "text ✓ \t\n\\ \x00",
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


def test_retention_by_count_evicts_whole_oldest_traces(stores, maker):
    store = stores.open(max_spans=10)
    ids, batches = oldest_first_traces(maker)
    # Write order differs from age order: eviction must go by start time.
    for i in (2, 0, 4, 1, 3):
        store.write(batches[i])
    # SQLite applies the limit on every write, PostgreSQL at most once a second: forcing a run
    # makes the end state the same for both.
    store.enforce_retention()

    assert stored_span_total(store) == 9
    assert store.evicted == 6
    assert store.written == 15
    assert [t.trace_id for t in all_traces(store)] == ids[:1:-1]
    for tid in ids[:2]:
        assert store.get_trace(tid) == []
    for tid in ids[2:]:
        assert len(store.get_trace(tid)) == 3


def test_retention_by_age(stores, maker):
    store = stores.open(max_age=3600)
    old = maker.request(start=NOW - 2 * 3600 * S, duration=S)
    new = maker.request(start=NOW - 60 * S, duration=S)
    store.write(old + new)
    store.enforce_retention()
    assert [t.trace_id for t in all_traces(store)] == [trace_id_of(new[0])]
    assert store.get_trace(trace_id_of(old[0])) == []
    assert store.evicted == 2

    assert store.enforce_retention(now_ns=NOW + 2 * 3600 * S) == 2
    assert all_traces(store) == []
    assert store.evicted == 4


def test_closed_store_raises_store_error(stores, maker):
    store = stores.open()
    store.write(maker.request(start=NOW - S, duration=MS))
    store.close()
    store.close()
    with pytest.raises(TraceStoreError, match="closed"):
        store.list_traces()
    with pytest.raises(TraceStoreError, match="closed"):
        store.get_trace("0" * 32)
    with pytest.raises(TraceStoreError, match="closed"):
        store.write(maker.request(start=NOW, duration=MS))
