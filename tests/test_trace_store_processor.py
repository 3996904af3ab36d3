"""`TraceStoreProcessor`: the queue and writer thread between the SDK and a trace store, over
real SDK spans and a real SQLite store (test doubles only for a stalled, failing or
unavailable store). The processor over a real PostgreSQL outage is in
test_trace_store_postgres_outage.py."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

from gateway.telemetry import trace_store_processor
from gateway.telemetry.trace_store import TraceStoreError, TraceStoreUnavailable
from gateway.telemetry.trace_store_processor import TraceStoreProcessor
from gateway.telemetry.trace_store_sqlite import SqliteTraceStore
from tests.test_trace_store_support import DAY, all_traces


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "traces.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteTraceStore]:
    s = SqliteTraceStore.open(db_path, max_spans=100_000, max_age_seconds=DAY)
    yield s
    s.close()


class StalledStore(SqliteTraceStore):
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


class UnreachableStore(SqliteTraceStore):
    """A store whose database is away while `down` is set (as PostgresTraceStore reports it)."""

    down: threading.Event
    attempts: int

    def write(self, spans: Sequence[ReadableSpan]) -> int:
        self.attempts += 1
        if self.down.is_set():
            raise TraceStoreUnavailable("trace store db:5432: connect failed: connection refused")
        return super().write(spans)


class RecordingStore(SqliteTraceStore):
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
        while not processor._worker.stopping:
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


# ---------------------------------------------------------------------------- unavailable store


@pytest.fixture
def unreachable(db_path) -> Iterator[UnreachableStore]:
    s = UnreachableStore.open(db_path, max_spans=100_000, max_age_seconds=DAY)
    s.down = threading.Event()
    s.down.set()
    s.attempts = 0
    yield s
    s.close()


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_unavailable_store_keeps_the_batch_and_logs_once(unreachable, caplog, monkeypatch):
    monkeypatch.setattr(trace_store_processor, "_RETRY_FIRST_SECONDS", 0.001)
    monkeypatch.setattr(trace_store_processor, "_RETRY_MAX_SECONDS", 0.01)
    processor, provider = pipeline(unreachable, capacity=20, max_batch=4, flush_interval=0.01)
    with caplog.at_level(logging.INFO, logger="gateway.telemetry.trace_store_processor"):
        emit(provider, 3)
        wait_until(lambda: unreachable.attempts >= 5)  # retried, the same batch each time
        emit(provider, 30)
        assert (processor.pending, processor.dropped, processor.failed) == (20, 10, 0)
        assert processor.force_flush(50) is False
        unreachable.down.clear()
        assert processor.force_flush(10_000)
    assert (processor.written, processor.failed, processor.write_errors) == (23, 0, 0)
    assert unreachable.span_count == 23
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert "connection refused" in caplog.records[0].getMessage()
    processor.shutdown()


def test_a_second_outage_is_logged_again(unreachable, caplog, monkeypatch):
    monkeypatch.setattr(trace_store_processor, "_RETRY_FIRST_SECONDS", 0.001)
    processor, provider = pipeline(unreachable, flush_interval=0.01)
    with caplog.at_level(logging.INFO, logger="gateway.telemetry.trace_store_processor"):
        for _ in range(2):
            unreachable.down.set()
            before = unreachable.attempts
            emit(provider, 1)
            wait_until(lambda b=before: unreachable.attempts >= b + 2)
            unreachable.down.clear()
            assert processor.force_flush(10_000)
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO", "WARNING", "INFO"]
    assert processor.written == 2
    processor.shutdown()


def test_shutdown_cuts_the_retry_pause_short(unreachable, monkeypatch):
    # A pause far longer than the drain deadline: only shutdown's wake-up gets the retry in.
    monkeypatch.setattr(trace_store_processor, "_RETRY_FIRST_SECONDS", 600.0)
    processor, provider = pipeline(unreachable, flush_interval=0.01, shutdown_timeout=5.0)
    emit(provider, 4)
    wait_until(lambda: unreachable.attempts == 1)
    unreachable.down.clear()
    processor.shutdown()
    assert not processor._thread.is_alive()
    assert (processor.written, processor.dropped, processor.failed) == (4, 0, 0)


def test_shutdown_drops_what_the_unavailable_store_never_took(unreachable, monkeypatch):
    monkeypatch.setattr(trace_store_processor, "_RETRY_FIRST_SECONDS", 0.01)
    processor, provider = pipeline(
        unreachable, max_batch=5, flush_interval=0.01, shutdown_timeout=0.2
    )
    emit(provider, 12)
    wait_until(lambda: unreachable.attempts >= 1)
    processor.shutdown()
    assert not processor._thread.is_alive()
    assert (processor.written, processor.dropped, processor.failed) == (0, 12, 0)
    assert processor.force_flush(10)  # nothing left pending
