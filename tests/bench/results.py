"""What a bench run found: every measured run, and the per-scenario, per-load aggregates.

Aggregation (the noise policy, also written into BENCHMARKS.md): each load is measured once
per round and the rounds interleave the servers, so throughput is the *median* over rounds
(with min–max shown); latency percentiles are taken over the *pooled* samples of all rounds;
CPU per 1,000 requests is total server CPU over total requests.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from tests.bench.load import LoadResult
from tests.bench.measure import percentile

__all__ = ["BenchRun", "LoadSummary", "Run", "ScenarioResult", "load_key"]

MIB = 1024 * 1024


def load_key(*, concurrency: int | None = None, rate: float | None = None) -> str:
    """ "c16" for a closed loop at concurrency 16, "r300" for 300 calls per second."""
    return f"c{concurrency}" if concurrency is not None else f"r{rate:g}"


@dataclass
class Run:
    """One measured run of one load against one server."""

    load: str
    round: int
    result: LoadResult
    cpu_seconds: float
    rss_after: int
    # aigw only: calls the gateway itself counted by gRPC status during the run.
    grpc: dict[str, int] | None = None
    scrapes: int = 0
    scrape_max_ms: float = 0.0
    # Share of the machine's CPU time stolen by the hypervisor during the run.
    steal: float = 0.0
    # Fleet: the trace store's spans by event during the load (written, dropped, failed,
    # evicted), what it still wrote after the load ended, the load's wall time (between the
    # two reads of /metrics), and the PostgreSQL cluster's CPU seconds (load and catch-up).
    store: dict[str, int] | None = None
    store_backlog: int = 0
    window_seconds: float = 0.0
    db_cpu_seconds: float | None = None

    @property
    def rows_per_second(self) -> float:
        """Spans the trace store wrote per second of load (one row per span): written between
        the reads around the load, over the load's own duration (the reads also bracket the
        load generator's start-up, when no span is made)."""
        seconds = self.result.elapsed or self.window_seconds
        if self.store is None or seconds <= 0:
            return 0.0
        return self.store["written"] / seconds

    @property
    def grpc_bad(self) -> int:
        """Calls that ended with a status other than OK (CANCELLED excepted: h2load -D cuts
        the calls in flight when its time is up)."""
        if self.grpc is None:
            return 0
        return sum(n for code, n in self.grpc.items() if code not in ("OK", "CANCELLED"))

    @property
    def grpc_verified(self) -> bool | None:
        if self.grpc is None:
            return None
        return self.grpc_bad == 0 and self.grpc.get("OK", 0) >= self.result.requests


@dataclass
class LoadSummary:
    load: str
    rounds: int
    requests: int
    errors: int
    throughput: float
    throughput_min: float
    throughput_max: float
    p50_ms: float
    p99_ms: float
    cpu_per_1k: float
    grpc_verified: bool | None
    extra: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, runs: list[Run]) -> LoadSummary:
        rates = [r.result.throughput for r in runs]
        latencies = sorted(x for r in runs for x in r.result.latencies_us)
        requests = sum(r.result.requests for r in runs)
        cpu = sum(r.cpu_seconds for r in runs)
        verified = [r.grpc_verified for r in runs]
        extra: dict[str, float] = {}
        for key in sorted({k for r in runs for k in r.result.extra}):
            values = [r.result.extra[key] for r in runs if key in r.result.extra]
            extra[key] = statistics.median(values)
        return cls(
            load=runs[0].load,
            rounds=len(runs),
            requests=requests,
            errors=sum(sum(r.result.errors.values()) + r.grpc_bad for r in runs),
            throughput=statistics.median(rates),
            throughput_min=min(rates),
            throughput_max=max(rates),
            p50_ms=percentile(latencies, 50) / 1000,
            p99_ms=percentile(latencies, 99) / 1000,
            cpu_per_1k=cpu / requests * 1000 if requests else float("nan"),
            grpc_verified=None if verified[0] is None else all(verified),
            extra=extra,
        )


@dataclass
class ScenarioResult:
    name: str
    title: str
    command: list[str]
    pid: int
    runs: list[Run] = field(default_factory=list)
    streams: list[LoadResult] = field(default_factory=list)
    # (when, VmRSS bytes summed over the process tree): after warm-up, then after every run.
    rss_timeline: list[tuple[str, int]] = field(default_factory=list)
    rss_after_round: list[int] = field(default_factory=list)
    peak_rss: int = 0
    export: dict[str, int] = field(default_factory=dict)
    scrapes: int = 0
    # The processes CPU and memory were summed over, at the end (aigw: supervisor, telemetry,
    # serving processes, multiprocessing's resource tracker).
    processes: int = 1
    # aigw serve --workers, when the scenario set it (None: the gateway's default).
    workers: int | None = None

    def loads(self) -> list[str]:
        return list(dict.fromkeys(r.load for r in self.runs))

    def summary(self, load: str) -> LoadSummary | None:
        runs = [r for r in self.runs if r.load == load]
        return LoadSummary.of(runs) if runs else None

    def ttft_ms(self) -> list[float]:
        """Every time to first chunk measured, in ms, sorted."""
        return sorted(x / 1000 for s in self.streams for x in s.latencies_us)

    def stream_errors(self) -> int:
        return sum(sum(s.errors.values()) for s in self.streams)

    def rss_growth(self) -> int | None:
        """VmRSS (of the process tree) at the end of the run minus at the end of round 1."""
        if len(self.rss_after_round) < 2:
            return None
        return self.rss_after_round[-1] - self.rss_after_round[0]


@dataclass
class BenchRun:
    machine: dict[str, str]
    versions: dict[str, str]
    settings: Any
    tool: str
    results: dict[str, ScenarioResult] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)
    sink: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    elapsed: float = 0.0
    steal: float = 0.0  # over the measured part of the run
    fleet: Any = None  # tests.bench.fleet.FleetExtras, when the fleet scenario ran

    def worst_steal(self) -> tuple[float, str]:
        """The run with the most CPU steal: (share, "scenario load round")."""
        runs = [
            (r.steal, f"{n} {r.load} round {r.round}")
            for n, s in self.results.items()
            for r in s.runs
        ]
        return max(runs, default=(0.0, ""))
