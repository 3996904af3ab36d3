"""Per-exporter health: what was exported, failed and dropped, and the last success and error.

One instance per signal lives for the whole process, across exporter swaps, so the counters
behind `aigw.telemetry.*` metrics and `GetOtelConfig` health never go backwards.

It is also where export failures are logged — once per state change, not once per export: a
WARNING when export starts failing (ok → failing, with the reason and message), fails for a
different reason, or the first time a newly configured exporter fails; an INFO line when it
recovers (failing → ok, with how many exports failed meanwhile). A dead backend with a 1 s
schedule would otherwise log every second, forever.

Drops are losses only: a span that was never meant to be exported (export is off) is not
counted; one that was queued for export and then could not be sent is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass

from gateway.telemetry.export_outcome import ExportOutcome

__all__ = ["ExportStats", "HealthSnapshot"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    exported: int
    failed: int
    dropped: int
    last_success_ns: int
    last_error_ns: int
    last_error: str


class ExportStats:
    def __init__(self, signal: str = "") -> None:
        # "traces" or "metrics", for log lines; the processor that owns it fills it in if unset.
        self.signal = signal
        self._lock = threading.Lock()
        # (outcome, reason) → items; outcome is "success" or "failed".
        self._results: Counter[tuple[str, str]] = Counter()
        self._dropped: Counter[str] = Counter()
        self._attempts: Counter[tuple[str, str]] = Counter()
        self._last_success_ns = 0
        self._last_error_ns = 0
        self._last_error = ""
        # Failures since export last worked, and the reason last logged ("": none since then or
        # since the exporter changed).
        self._failures_in_a_row = 0
        self._announced = ""

    def record(self, outcome: ExportOutcome, items: int) -> None:
        now = time.time_ns()
        key = ("success", "") if outcome.success else ("failed", outcome.reason)
        with self._lock:
            self._results[key] += items
            self._attempts[key] += 1
            failures, announced = self._failures_in_a_row, self._announced
            if outcome.success:
                self._last_success_ns = now
                self._failures_in_a_row, self._announced = 0, ""
            else:
                self._last_error_ns = now
                detail = outcome.message or outcome.grpc_code or str(outcome.http_status or "")
                self._last_error = f"{outcome.reason}: {detail}" if detail else outcome.reason
                self._failures_in_a_row += 1
                self._announced = outcome.reason
            last_error = self._last_error
        what = f"OTLP {self.signal or 'telemetry'} export"
        if outcome.success:
            if failures:
                _log.info("%s recovered after %d failed export(s)", what, failures)
        elif outcome.reason != announced:
            _log.warning("%s failing: %s", what, last_error)

    def exporter_changed(self) -> None:
        """A new exporter took over: its first failure is logged even for the same reason."""
        with self._lock:
            self._announced = ""

    def drop(self, reason: str, items: int = 1) -> None:
        with self._lock:
            self._dropped[reason] += items

    def results(self) -> dict[tuple[str, ...], int]:
        with self._lock:
            return {("success", ""): 0, **self._results}

    def attempts(self) -> dict[tuple[str, ...], int]:
        with self._lock:
            return {("success", ""): 0, **self._attempts}

    def dropped(self) -> dict[tuple[str, ...], int]:
        with self._lock:
            return {("queue_full",): 0, **{(k,): v for k, v in self._dropped.items()}}

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            return HealthSnapshot(
                exported=self._results[("success", "")],
                failed=sum(n for (o, _), n in self._results.items() if o == "failed"),
                dropped=sum(self._dropped.values()),
                last_success_ns=self._last_success_ns,
                last_error_ns=self._last_error_ns,
                last_error=self._last_error,
            )
