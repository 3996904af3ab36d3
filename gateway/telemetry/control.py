"""What the control plane may ask of the telemetry side: the one narrow interface.

`admin/` (the config manager, the AdminService servicer, the fleet heartbeat) holds a
`TelemetryControl` and nothing else of `gateway.telemetry`: it points export somewhere, reads
how export is doing, tests an endpoint without touching the live exporters, and queries the
trace store. `Telemetry` (pipeline.py) is the implementation; which exporters, processors and
stores sit behind it is its own business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.telemetry.export_outcome import ExportOutcome
from gateway.telemetry.export_settings import ExporterSettings, OtelSettings
from gateway.telemetry.export_stats import HealthSnapshot
from gateway.telemetry.trace_store import TraceStore

__all__ = ["ExportHealth", "TelemetryControl"]


@dataclass(frozen=True, slots=True)
class ExportHealth:
    traces: HealthSnapshot
    metrics: HealthSnapshot


class TelemetryControl(Protocol):
    @property
    def traces(self) -> TraceStore:
        """The trace store, for queries."""
        ...

    def flush_traces(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until every span ended so far is in the trace
        store, so a query right after a call sees it (read your own writes). Blocking."""
        ...

    def apply(self, settings: OtelSettings) -> None:
        """Point OTLP export where `settings` say; all or nothing. Blocking."""
        ...

    def health(self) -> ExportHealth: ...

    def test_export(self, section: str, settings: ExporterSettings) -> tuple[ExportOutcome, float]:
        """One real export with `settings` (nothing live changes): the outcome and seconds
        taken. Blocking."""
        ...
