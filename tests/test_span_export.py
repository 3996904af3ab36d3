"""The span export processor on its own: switching, draining, drops, deadlines."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from gateway.telemetry.export_stats import ExportStats
from gateway.telemetry.span_export import SpanExportProcessor


class Recorder(SpanExporter):
    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.names: list[str] = []
        self.result = result
        self.shut = threading.Event()
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        if self.result is SpanExportResult.SUCCESS:
            self.names += [s.name for s in spans]
        return self.result

    def shutdown(self) -> None:
        self.shut.set()


def setup(**kwargs: int) -> tuple[SpanExportProcessor, ExportStats, TracerProvider]:
    stats = ExportStats()
    processor = SpanExportProcessor(stats, schedule_delay=0.05, **kwargs)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    return processor, stats, provider


def emit(provider: TracerProvider, *names: str) -> None:
    tracer = provider.get_tracer("t")
    for name in names:
        tracer.start_span(name).end()


def test_switching_off_delivers_the_queue_to_the_old_exporter_then_retires_it() -> None:
    processor, stats, provider = setup()
    old = Recorder()
    old.gate = threading.Event()
    processor.swap(old)
    emit(provider, "a")
    assert old.entered.wait(5)  # "a" is in flight, held at the gate
    emit(provider, "b", "c")  # queued behind it
    processor.swap(None)
    emit(provider, "after")
    old.gate.set()
    assert processor.force_flush(5000)
    assert old.names == ["a", "b", "c"]
    assert old.shut.wait(5)
    # "after" ended while export was off: never meant for export, so not a loss.
    assert stats.snapshot().dropped == 0
    processor.shutdown()


def test_back_on_during_a_drain_sends_the_queue_to_the_new_exporter() -> None:
    processor, _, provider = setup()
    old, new = Recorder(), Recorder()
    old.gate = threading.Event()
    processor.swap(old)
    emit(provider, "a")
    assert old.entered.wait(5)
    emit(provider, "b")
    processor.swap(None)
    processor.swap(new)
    old.gate.set()
    emit(provider, "c")
    assert processor.force_flush(5000)
    assert old.names + new.names == ["a", "b", "c"]
    assert old.shut.wait(5), "the drained exporter is shut down, not leaked"
    processor.shutdown()
    assert new.shut.is_set()


def test_a_batch_failing_on_a_retired_exporter_is_sent_through_the_new_one() -> None:
    processor, stats, provider = setup()
    failing, good = Recorder(SpanExportResult.FAILURE), Recorder()
    failing.gate = threading.Event()
    processor.swap(failing)
    emit(provider, "x")
    assert failing.entered.wait(5)
    processor.swap(good)
    failing.gate.set()
    assert processor.force_flush(5000)
    assert good.names == ["x"]
    assert stats.snapshot().failed == 0
    processor.shutdown()


def test_a_full_queue_drops_and_counts_and_flush_honours_its_deadline() -> None:
    processor, stats, provider = setup(max_queue_size=5, max_batch_size=1)
    stuck = Recorder()
    stuck.gate = threading.Event()
    processor.swap(stuck)
    emit(provider, *(f"s{i}" for i in range(20)))
    assert stats.dropped()[("queue_full",)] >= 10
    assert processor.force_flush(100) is False
    stuck.gate.set()
    assert processor.force_flush(5000)
    processor.shutdown()
    processor.shutdown()  # safe twice
