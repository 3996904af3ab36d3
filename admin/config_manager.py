"""Validate → apply → persist, one change at a time, with optimistic concurrency.

At start the stored config wins; with none stored, the standard OTEL_EXPORTER_OTLP_* variables
seed it. A Set is validated whole (every problem reported), checked against `expected_version`,
applied to the live pipeline (exporters built first, so a failure switches nothing), then
persisted; if persisting fails the previous config is applied again, so memory, disk and the
running exporters never disagree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import replace

from aigw.v1 import otel_config_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from admin.config_store import ConfigStore
from admin.otel_config import InvalidConfig, from_environment, merge, section_from_proto
from gateway.telemetry.export_outcome import (
    ExportOutcome,
    outcome_from_exception,
    reported_outcome,
)
from gateway.telemetry.export_settings import ExporterSettings, OtelSettings
from gateway.telemetry.otlp_exporters import build_metric_exporter, build_span_exporter
from gateway.telemetry.pipeline import Telemetry

__all__ = ["OtelConfigManager", "StaleVersion", "TestResult"]

_log = logging.getLogger(__name__)


class StaleVersion(Exception):
    def __init__(self, expected: int, current: int) -> None:
        super().__init__(
            f"expected_version: config is at version {current}, not {expected}; "
            "Get it again and re-apply your change"
        )


class TestResult:
    __slots__ = ("elapsed", "outcome")

    def __init__(self, outcome: ExportOutcome, elapsed: float) -> None:
        self.outcome = outcome
        self.elapsed = elapsed


class OtelConfigManager:
    def __init__(self, telemetry: Telemetry, store: ConfigStore) -> None:
        self._telemetry = telemetry
        self._store = store
        self._settings = OtelSettings()
        self._lock = asyncio.Lock()

    @property
    def settings(self) -> OtelSettings:
        return self._settings

    async def start(self, env: Mapping[str, str]) -> None:
        """Load the stored config (or seed from `env`) and apply it. Raises on a bad store or
        bad variables: the gateway must not start exporting somewhere it was not told to."""
        stored = await asyncio.to_thread(self._store.load)
        settings = stored if stored is not None else from_environment(env)
        await asyncio.to_thread(self._telemetry.apply, settings)
        self._settings = settings
        _log.info(
            "OTLP export: traces %s, metrics %s (config version %d, %s)",
            _describe(settings.traces),
            _describe(settings.metrics),
            settings.version,
            "stored" if stored is not None else "from environment",
        )

    async def set(
        self, config: otel_config_pb2.OtelConfig, expected_version: int | None
    ) -> OtelSettings:
        async with self._lock:
            current = self._settings
            if expected_version is not None and expected_version != current.version:
                raise StaleVersion(expected_version, current.version)
            new = replace(merge(config, current), version=current.version + 1)
            await asyncio.to_thread(self._telemetry.apply, new)
            try:
                await asyncio.to_thread(self._store.save, new)
            except BaseException:
                await asyncio.to_thread(self._telemetry.apply, current)
                raise
            self._settings = new
            _log.info(
                "OTLP export changed to version %d: traces %s, metrics %s",
                new.version,
                _describe(new.traces),
                _describe(new.metrics),
            )
            return new

    async def test(self, config: otel_config_pb2.OtelConfig) -> dict[str, TestResult]:
        """One real export per section present, with the stored header values behind masks."""
        problems: list[tuple[str, str]] = []
        sections: dict[str, ExporterSettings] = {}
        for name in ("traces", "metrics"):
            if config.HasField(name):
                stored = getattr(self._settings, name)
                settings = section_from_proto(getattr(config, name), name, stored, problems)
                if not settings.endpoint:
                    problems.append((f"{name}.endpoint", "required to test"))
                sections[name] = replace(settings, enabled=True)
        if not sections:
            problems.append(("config", "give a traces or metrics section to test"))
        if problems:
            raise InvalidConfig(problems)
        results = await asyncio.gather(
            *(
                asyncio.to_thread(_test_export, name, s, self._telemetry)
                for name, s in sections.items()
            )
        )
        return dict(zip(sections, results, strict=True))


def _describe(s: ExporterSettings) -> str:
    if not s.enabled:
        return "off"
    encoding = f"/{s.encoding}" if s.protocol == "http" else ""
    return f"{s.protocol}{encoding} → {s.endpoint}"


def _test_export(section: str, settings: ExporterSettings, telemetry: Telemetry) -> TestResult:
    started = time.perf_counter()
    secrets = tuple(v for _, v in settings.headers)
    try:
        if section == "traces":
            exporter = build_span_exporter(settings)
            spans = InMemorySpanExporter()
            provider = TracerProvider(resource=telemetry.resource)
            provider.add_span_processor(SimpleSpanProcessor(spans))
            provider.get_tracer("aigw.otel.test").start_span("aigw.otel.test").end()
            provider.shutdown()
            try:
                ok = exporter.export(spans.get_finished_spans()).name == "SUCCESS"
            finally:
                exporter.shutdown()
        else:
            exporter = build_metric_exporter(settings)
            reader = InMemoryMetricReader()
            provider = MeterProvider(resource=telemetry.resource, metric_readers=[reader])
            provider.get_meter("aigw.otel.test").create_counter("aigw.otel.test").add(1)
            data = reader.get_metrics_data()
            provider.shutdown()
            try:
                ok = exporter.export(data, timeout_millis=settings.timeout * 1000).name == "SUCCESS"
            finally:
                exporter.shutdown()
        outcome = reported_outcome(exporter, ok)
    except Exception as e:
        outcome = outcome_from_exception(e, secrets=secrets)
    return TestResult(outcome, time.perf_counter() - started)
