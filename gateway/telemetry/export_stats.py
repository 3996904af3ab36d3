"""Per-exporter health: what was exported, failed and dropped, and the last success and error.

One instance per signal lives for the whole process, across exporter swaps, so the counters
behind `aigw.telemetry.*` metrics and `GetOtelConfig` health never go backwards.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

from gateway.telemetry.export_outcome import ExportOutcome

__all__ = ["ExportStats", "HealthSnapshot"]


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    exported: int
    failed: int
    dropped: int
    last_success_ns: int
    last_error_ns: int
    last_error: str


class ExportStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (outcome, reason) → items; outcome is "success" or "failed".
        self._results: Counter[tuple[str, str]] = Counter()
        self._dropped: Counter[str] = Counter()
        self._attempts: Counter[tuple[str, str]] = Counter()
        self._last_success_ns = 0
        self._last_error_ns = 0
        self._last_error = ""

    def record(self, outcome: ExportOutcome, items: int) -> None:
        now = time.time_ns()
        key = ("success", "") if outcome.success else ("failed", outcome.reason)
        with self._lock:
            self._results[key] += items
            self._attempts[key] += 1
            if outcome.success:
                self._last_success_ns = now
            else:
                self._last_error_ns = now
                detail = outcome.message or outcome.grpc_code or str(outcome.http_status or "")
                self._last_error = f"{outcome.reason}: {detail}" if detail else outcome.reason

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
