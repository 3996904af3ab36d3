"""The Overview's data: the gateway's own metrics, sampled every few seconds into a small ring.

Each sample reads the same registry `/metrics` serves (catalog names, Prometheus spelling) and
keeps only the running totals the charts need; a chart point is the change between two
consecutive samples: a rate, or a quantile of the histogram buckets filled in between (as
PromQL's histogram_quantile does it). Nothing is kept beyond `size` samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

__all__ = ["Chart", "MetricRing", "Sample", "Series", "take_sample"]

_log = logging.getLogger(__name__)

_RPC = "rpc_server_call_duration_seconds"
_TOKENS = "gen_ai_client_token_usage"
_TTFT = "gen_ai_server_time_to_first_token_seconds"
_COST = "aigw_usage_cost_USD_total"


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.time()
    requests: float = 0.0
    errors: float = 0.0
    latency: dict[float, float] = field(default_factory=dict)  # le → cumulative count
    tokens: float = 0.0
    ttft: dict[float, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)  # route → USD


def take_sample(registry: CollectorRegistry) -> Sample:
    requests = errors = tokens = 0.0
    latency: dict[float, float] = {}
    ttft: dict[float, float] = {}
    cost: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == _RPC + "_count":
                requests += s.value
                if s.labels.get("rpc_response_status_code", "OK") != "OK":
                    errors += s.value
            elif s.name == _RPC + "_bucket":
                le = float(s.labels["le"])
                latency[le] = latency.get(le, 0.0) + s.value
            elif s.name == _TOKENS + "_sum":
                tokens += s.value
            elif s.name == _TTFT + "_bucket":
                le = float(s.labels["le"])
                ttft[le] = ttft.get(le, 0.0) + s.value
            elif s.name == _COST:
                route = s.labels.get("aigw_route", "")
                cost[route] = cost.get(route, 0.0) + s.value
    return Sample(time.time(), requests, errors, latency, tokens, ttft, cost)


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative bucket counts; None when nothing was observed."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (
                count - previous_count
            )
        previous_bound, previous_count = bound, count
    return previous_bound


def _delta(new: dict[float, float], old: dict[float, float]) -> dict[float, float]:
    return {k: max(v - old.get(k, 0.0), 0.0) for k, v in new.items()}


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    points: list[tuple[float, float | None]]  # (time, value); None: nothing to show


@dataclass(frozen=True, slots=True)
class Chart:
    key: str
    title: str
    unit: str
    series: list[Series]

    @property
    def latest(self) -> list[tuple[str, float | None]]:
        return [(s.label, s.points[-1][1] if s.points else None) for s in self.series]


class MetricRing:
    def __init__(
        self, registry: CollectorRegistry, *, interval: float = 5.0, size: int = 120
    ) -> None:
        self._registry = registry
        self.interval = interval
        self._samples: deque[Sample] = deque(maxlen=size)
        self._task: asyncio.Task[None] | None = None

    def samples(self) -> list[Sample]:
        return list(self._samples)

    async def sample_now(self) -> None:
        self._samples.append(await asyncio.to_thread(take_sample, self._registry))

    async def _run(self) -> None:
        while True:
            try:
                await self.sample_now()
            except Exception:  # a chart must never take the side-port down
                _log.exception("could not sample the gateway's metrics for the console")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="aigw-console-ring")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def charts(self) -> list[Chart]:
        pairs = list(zip(self._samples, list(self._samples)[1:], strict=False))

        def points(f: Iterable[tuple[float, float | None]]) -> list[tuple[float, float | None]]:
            return list(f)

        def rate(get: str) -> list[tuple[float, float | None]]:
            return points(
                (b.at, max(getattr(b, get) - getattr(a, get), 0.0) / max(b.at - a.at, 1e-9))
                for a, b in pairs
            )

        def q(get: str, level: float) -> list[tuple[float, float | None]]:
            return points(
                (b.at, quantile(level, _delta(getattr(b, get), getattr(a, get)))) for a, b in pairs
            )

        error_ratio = points(
            (
                b.at,
                (b.errors - a.errors) / (b.requests - a.requests)
                if b.requests > a.requests
                else None,
            )
            for a, b in pairs
        )
        routes = sorted({r for s in self._samples for r in s.cost})
        cost = [
            Series(
                route,
                points(
                    (
                        b.at,
                        max(b.cost.get(route, 0.0) - a.cost.get(route, 0.0), 0.0)
                        * 60
                        / max(b.at - a.at, 1e-9),
                    )
                    for a, b in pairs
                ),
            )
            for route in routes
        ]
        return [
            Chart("rate", "Request rate", "req/s", [Series("requests", rate("requests"))]),
            Chart(
                "errors",
                "Error rate",
                "%",
                [Series("errors", [(t, None if v is None else v * 100) for t, v in error_ratio])],
            ),
            Chart(
                "latency",
                "Latency",
                "s",
                [Series("p50", q("latency", 0.5)), Series("p99", q("latency", 0.99))],
            ),
            Chart("tokens", "Tokens per second", "tokens/s", [Series("tokens", rate("tokens"))]),
            Chart(
                "ttft",
                "Time to first token",
                "s",
                [Series("p50", q("ttft", 0.5)), Series("p99", q("ttft", 0.99))],
            ),
            Chart("cost", "Cost per route", "USD/min", cost),
        ]
