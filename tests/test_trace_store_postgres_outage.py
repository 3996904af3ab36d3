"""The PostgreSQL trace store when its database goes away and comes back (the real server,
stopped and started), and its credentials: the password never reaches an error or a log.

The `pg_cluster` server is shared by the whole session, so every test that stops it starts it
again in a `finally`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
from opentelemetry.sdk.trace import TracerProvider

from gateway.telemetry import trace_store_processor
from gateway.telemetry.trace_store import TraceStoreError, TraceStoreUnavailable
from gateway.telemetry.trace_store_postgres import PostgresTraceStore
from gateway.telemetry.trace_store_processor import TraceStoreProcessor
from tests.postgres import PostgresCluster
from tests.test_trace_store_support import (
    DAY,
    MS,
    NOW,
    S,
    SpanMaker,
    all_traces,
    reset_postgres_at,
    trace_id_of,
)

# Stopping and starting the server takes a second or two; nothing here may hang for long.
pytestmark = pytest.mark.timeout(60)

PROCESSOR_LOG = "gateway.telemetry.trace_store_processor"


def open_store(url: str, replica: str = "r") -> PostgresTraceStore:
    return PostgresTraceStore.open(url, max_spans=100_000, max_age_seconds=DAY, replica=replica)


@pytest.fixture(scope="module")
def shared_url(pg_cluster: PostgresCluster) -> str:
    """One database for this module (creating one costs a second on a busy machine); its
    trace tables are emptied before each test."""
    return pg_cluster.create_database("outage")


@pytest.fixture
def trace_db(shared_url: str) -> str:
    """The module's database with its trace tables emptied."""
    reset_postgres_at(shared_url)
    return shared_url


@pytest.fixture
def store(trace_db: str) -> Iterator[PostgresTraceStore]:
    s = open_store(trace_db)
    yield s
    s.close()


@pytest.fixture
def stopped(pg_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """The server, stopped for the test's duration (started again whatever happens)."""
    pg_cluster.stop()
    try:
        yield pg_cluster
    finally:
        pg_cluster.start()


def test_open_does_not_need_the_database(pg_cluster, trace_db):
    pg_cluster.stop()
    try:
        store = open_store(trace_db)  # no connection yet: a gateway starts without it
        with pytest.raises(TraceStoreUnavailable, match=r"connection refused"):
            store.write(SpanMaker().request(start=NOW - S, duration=MS))
    finally:
        pg_cluster.start()
    # Connects (and checks the schema) on first use once the database is there.
    store.write(SpanMaker().request(start=NOW - S, duration=MS))
    assert len(all_traces(store)) == 1
    store.close()


def test_database_down_then_back(pg_cluster, store):
    maker = SpanMaker()
    before = maker.request(start=NOW - 3 * S, duration=MS)
    store.write(before)
    during = maker.request(start=NOW - 2 * S, duration=MS)
    pg_cluster.stop()
    try:
        # The connections break under the store; every call says so, and again on retry.
        for _ in range(2):
            with pytest.raises(TraceStoreUnavailable) as info:
                store.write(during)
            assert f"127.0.0.1:{pg_cluster.port}" in str(info.value)
            with pytest.raises(TraceStoreUnavailable):
                store.list_traces()
            with pytest.raises(TraceStoreUnavailable):
                store.get_trace(trace_id_of(before[0]))
        assert store.written == 2
    finally:
        pg_cluster.start()
    # Reconnects by itself: the same batch goes in, nothing of the failed attempts is there.
    assert store.write(during) == 2
    assert [t.trace_id for t in all_traces(store)] == [
        trace_id_of(during[0]),
        trace_id_of(before[0]),
    ]
    assert [t.span_count for t in all_traces(store)] == [2, 2]


def test_processor_holds_spans_while_the_database_is_down(pg_cluster, store, caplog, monkeypatch):
    # Short backoff: the restart below must not wait out a five-second pause.
    monkeypatch.setattr(trace_store_processor, "_RETRY_MAX_SECONDS", 0.2)
    processor = TraceStoreProcessor(store, capacity=50, max_batch=10, flush_interval=0.01)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    caplog.set_level(logging.INFO, logger=PROCESSOR_LOG)
    pg_cluster.stop()
    try:
        tracer.start_span("first").end()
        wait_for(lambda: any(r.levelno == logging.WARNING for r in caplog.records))
        assert processor.pending == 0  # the writer holds that span, retrying
        for i in range(100):
            tracer.start_span(f"s{i}").end()
        # Queued up to capacity; the rest dropped and counted; nothing counted failed.
        assert (processor.queued, processor.pending, processor.dropped) == (51, 50, 50)
        assert (processor.written, processor.failed, processor.write_errors) == (0, 0, 0)
        assert processor.force_flush(100) is False  # honours its timeout
    finally:
        pg_cluster.start()
    assert processor.force_flush(20_000)
    assert (processor.written, processor.dropped, processor.failed) == (51, 50, 0)
    names = {t.root_span_name for t in all_traces(store)}
    assert names == {"first"} | {f"s{i}" for i in range(50)}
    # One line when it went away, one when it came back; not one per retry.
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == PROCESSOR_LOG]
    assert [level for level, _ in logged] == [logging.WARNING, logging.INFO], logged
    assert "unavailable" in logged[0][1]
    assert "available again" in logged[1][1]
    processor.shutdown()


def test_shutdown_while_the_database_is_down_is_bounded(store, stopped):
    processor = TraceStoreProcessor(store, max_batch=10, flush_interval=0.01, shutdown_timeout=0.3)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    for i in range(25):
        tracer.start_span(f"s{i}").end()
    processor.shutdown()
    assert not processor._thread.is_alive()
    # What could not be written by the drain deadline is dropped, not failed.
    assert (processor.written, processor.failed, processor.dropped) == (0, 0, 25)


# ---------------------------------------------------------------------------- credentials


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as a handler would print it, tracebacks included."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records)


def raised_text(exc: BaseException) -> str:
    """The exception's message and repr, and those of everything chained to it."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return "\n".join(parts)


def test_password_never_in_errors_or_logs(pg_cluster, trace_db, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-Passw0rd-xyz"
    bad_url = trace_db.replace(pg_cluster.password, wrong)
    secrets = (pg_cluster.password, wrong, trace_db, bad_url)
    texts: list[str] = []

    # Wrong password: the server refuses; a fixed phrase says why, without the user.
    bad = open_store(bad_url)
    for call in (
        lambda: bad.write(SpanMaker().request(start=NOW, duration=MS)),
        bad.list_traces,
    ):
        with pytest.raises(TraceStoreUnavailable, match="password authentication failed") as info:
            call()
        texts.append(raised_text(info.value))
        assert "aigw_test" not in str(info.value)
    bad.close()

    # Server down, through the processor too (it logs the store's error).
    good = open_store(trace_db)
    good.write(SpanMaker().request(start=NOW - S, duration=MS))
    processor = TraceStoreProcessor(good, flush_interval=0.01, shutdown_timeout=0.2)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    pg_cluster.stop()
    try:
        with pytest.raises(TraceStoreUnavailable) as info:
            good.list_traces()
        texts.append(raised_text(info.value))
        provider.get_tracer("t").start_span("s").end()
        wait_for(lambda: any(r.name == PROCESSOR_LOG for r in caplog.records))
        processor.shutdown()
    finally:
        pg_cluster.start()
    good.close()

    # A URL that does not parse: libpq's message would quote the password.
    unparsable = trace_db.replace(pg_cluster.password, "pa%zz" + quote(pg_cluster.password))
    with pytest.raises(TraceStoreError, match="cannot be parsed") as info:
        open_store(unparsable)
    texts.append(raised_text(info.value))

    logged = everything_logged(caplog)
    assert "unavailable" in logged  # the outage was logged, so the check below saw it
    for text in (*texts, logged):
        for secret in secrets:
            assert secret not in text


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
