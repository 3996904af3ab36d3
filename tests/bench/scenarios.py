"""The scenarios of `make bench` and the run that measures them, interleaved.

    baseline   bare grpc.aio server, fixed answer (tests/bench/baseline_server.py)
    minimal    aigw serve, echo route, trace store on (always), OTLP export off
    full       as minimal + OTLP/HTTP export of traces and metrics (every 1 s) to a live
               receiver in another process + /metrics scraped every second by the harness
    refused    as full, the trace endpoint refusing connections (metrics still exported)
    blackhole  as full, the trace endpoint accepting and never answering
    fleet      as full, trace store and OTEL config in PostgreSQL (`[store]`, fleet mode): a
               PostgreSQL cluster started by the bench, one database; then, in the same run,
               the store micro-benchmark and config convergence of `tests/bench/fleet.py`
    full-w2    as full, two serving processes (`aigw serve --workers 2`); no target: shown
               beside full (one serving process), not judged

aigw serve is a supervisor, one telemetry process and N serving processes: an aigw server's
CPU and memory are summed over that process tree (`ProcStats`).

Every server runs at once, each in its own process on 127.0.0.1. After a warm-up, each round
runs every load (concurrency 1, 16, 64; then 300 calls/s) against every server in turn, the
server order rotating by one each round, so slow drift of a shared machine lands on all
servers alike. Before each run a few Python-client calls must be gRPC OK with the expected
answer; around each run the harness reads the server's CPU time and memory from /proc and, for
aigw, its own count of calls by gRPC status from /metrics. For fleet, also the trace store's
count of spans (written, dropped, failed) and the PostgreSQL cluster's CPU time; after the
load it waits for the store's writer to catch up, and counts what it still had to write.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from admin.secret_box import new_key
from tests.bench import fleet, report
from tests.bench.fleet import BenchPostgres
from tests.bench.load import Loader
from tests.bench.measure import (
    Scraper,
    cpu_times,
    export_counters,
    fetch_metrics,
    machine_info,
    package_versions,
    percentile,
    source_state,
    status_counts,
    store_counts,
)
from tests.bench.payload import STREAM_ROUTE, bench_request, grpc_frame
from tests.bench.results import BenchRun, Run, ScenarioResult, load_key
from tests.bench.servers import (
    REPO,
    ServerProcess,
    SinkProcess,
    StoreEnv,
    configure_export,
    serve_options,
    start_aigw,
    start_baseline,
    start_sink,
)

__all__ = ["SCENARIOS", "Scenario", "Settings", "main", "run_bench"]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    aigw: bool = True
    # Where spans go: None (export off), or a key of the sink's URLs.
    traces: str | None = None
    scrape: bool = False
    # Fleet mode: OTEL config and trace store in a PostgreSQL database of its own.
    store: bool = False
    # `aigw serve --workers N`; None passes no --workers at all (the gateway's default, and
    # the only choice for an alternative tree whose CLI predates the option).
    workers: int | None = None

    @property
    def serve_args(self) -> tuple[str, ...]:
        return ("--workers", str(self.workers)) if self.workers is not None else ()


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("baseline", "bare grpc.aio server, fixed response", aigw=False),
        Scenario("minimal", "aigw, telemetry minimal: trace store on, OTLP export off"),
        Scenario(
            "full",
            "aigw, full telemetry: trace store + OTLP traces and metrics to a live receiver "
            "+ /metrics scraped every 1 s",
            traces="live_traces",
            scrape=True,
        ),
        Scenario(
            "full-w2",
            "as full, two serving processes (`--workers 2`)",
            traces="live_traces",
            scrape=True,
            workers=2,
        ),
        Scenario(
            "refused",
            "as full, trace endpoint refusing connections",
            traces="refusing_traces",
            scrape=True,
        ),
        Scenario(
            "blackhole",
            "as full, trace endpoint black-holed (accepts, never answers)",
            traces="black_hole_traces",
            scrape=True,
        ),
        Scenario(
            "fleet",
            "as full, trace store and OTEL config in PostgreSQL (fleet mode, one database)",
            traces="live_traces",
            scrape=True,
            store=True,
        ),
    )
}


ALT = "@alt"


def scenario_of(name: str) -> Scenario:
    """The scenario a server runs: "full@alt" runs "full"."""
    return SCENARIOS[name.removesuffix(ALT)]


@dataclass(frozen=True)
class Settings:
    out: Path
    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    concurrency: tuple[int, ...] = (1, 16, 64)
    rate: float = 300.0
    duration: float = 4.0
    rate_duration: float = 4.0
    rounds: int = 3
    warmup: float = 2.0
    stream_samples: int = 240
    stream_delay_ms: float = 50.0
    stream_concurrency: int = 4
    tool: str = "auto"
    workdir: Path | None = None
    # Also run every aigw scenario with the gateway code of this tree, as "<name>@alt".
    alt_tree: Path | None = None
    # With the fleet scenario: Sets timed for config convergence, and batches per store in
    # the trace store micro-benchmark (0 skips either).
    fleet_sets: int = 20
    fleet_batches: int = 60

    def servers(self) -> list[str]:
        names = list(self.scenarios)
        if self.alt_tree is not None:
            names += [f"{n}{ALT}" for n in self.alt_scenarios()[0]]
        return names

    def alt_scenarios(self) -> tuple[list[str], list[str]]:
        """(aigw scenarios the alternative tree runs too, those its CLI cannot run): an older
        tree without `--workers` still runs the others."""
        if self.alt_tree is None:
            return [], []
        accepted = serve_options(self.alt_tree)
        runs, skipped = [], []
        for name in self.scenarios:
            scenario = SCENARIOS[name]
            if not scenario.aigw:
                continue
            options = [a for a in scenario.serve_args if a.startswith("--")]
            (runs if all(o in accepted for o in options) else skipped).append(name)
        return runs, skipped

    def loads(self) -> list[tuple[str, int | None, float | None]]:
        loads: list[tuple[str, int | None, float | None]] = [
            (load_key(concurrency=c), c, None) for c in self.concurrency
        ]
        if self.rate > 0:
            loads.append((load_key(rate=self.rate), None, self.rate))
        return loads


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Running:
    servers: dict[str, ServerProcess]
    sink: SinkProcess | None
    # Fleet-mode servers: the PostgreSQL cluster each one's database is on (one each).
    clusters: dict[str, BenchPostgres]


def _start_fleet_aigw(
    name: str, workdir: Path, delay: float, tree: Path | None, clusters: dict[str, BenchPostgres]
) -> ServerProcess:
    cluster = BenchPostgres()
    clusters[name] = cluster  # stopped with the others, even if the gateway fails to start
    store = StoreEnv(cluster.create_database("bench"), new_key())
    serve_args = scenario_of(name).serve_args
    return start_aigw(name, workdir, delay, tree=tree, store=store, serve_args=serve_args)


@contextlib.contextmanager
def _servers(settings: Settings, workdir: Path) -> Iterator[Running]:
    names = settings.servers()
    sink: SinkProcess | None = None
    servers: dict[str, ServerProcess] = {}
    clusters: dict[str, BenchPostgres] = {}
    try:
        with ThreadPoolExecutor(max_workers=len(names) + 1) as pool:
            sink_future = (
                pool.submit(start_sink, workdir)
                if any(scenario_of(n).traces for n in names)
                else None
            )
            futures = {}
            for name in names:
                delay = settings.stream_delay_ms
                if not scenario_of(name).aigw:
                    futures[name] = pool.submit(start_baseline, workdir, delay)
                    continue
                tree = settings.alt_tree if name.endswith(ALT) else None
                if scenario_of(name).store:
                    futures[name] = pool.submit(
                        _start_fleet_aigw, name, workdir, delay, tree, clusters
                    )
                    continue
                futures[name] = pool.submit(
                    start_aigw,
                    name,
                    workdir,
                    delay,
                    tree=tree,
                    serve_args=scenario_of(name).serve_args,
                )
            errors: list[BaseException] = []
            for name, future in futures.items():
                try:
                    servers[name] = future.result()
                except Exception as e:  # keep the others so they are stopped below
                    errors.append(e)
            if sink_future is not None:
                try:
                    sink = sink_future.result()
                except Exception as e:
                    errors.append(e)
            if errors:
                raise errors[0]
        yield Running(servers, sink, clusters)
    finally:
        with ThreadPoolExecutor(max_workers=len(servers) + 1) as pool:
            for server in servers.values():
                pool.submit(server.stop)
        # The sink and databases last: a gateway flushing spans at shutdown still finds them.
        if sink is not None:
            sink.stop()
        for cluster in clusters.values():
            cluster.close()


def _measure(
    server: ServerProcess,
    scenario: Scenario,
    loader: Loader,
    settings: Settings,
    load: tuple[str, int | None, float | None],
    round_no: int,
    cluster: BenchPostgres | None = None,
) -> Run:
    key, concurrency, rate = load
    server.check(calls=3)
    text = fetch_metrics(server.metrics_port) if server.metrics_port else None
    statuses = status_counts(text) if text is not None else None
    stored = store_counts(text) if text is not None and scenario.store else None
    db_before = cluster.cpu_seconds() if cluster is not None else 0.0
    before = server.stats()
    steal_before = cpu_times()
    scraper = Scraper(server.metrics_port) if scenario.scrape and server.metrics_port else None
    window_start = time.monotonic()
    with scraper.running() if scraper else contextlib.nullcontext():
        if concurrency is not None:
            result = loader.closed(server.port, concurrency, settings.duration)
        else:
            assert rate is not None
            result = loader.paced(server.port, rate, settings.rate_duration)
    window = time.monotonic() - window_start
    after = server.stats()
    steal_after = cpu_times()
    grpc_delta = None
    store_delta = None
    backlog = 0
    if statuses is not None and server.metrics_port:
        text = fetch_metrics(server.metrics_port)
        now = status_counts(text)
        grpc_delta = {k: v - statuses.get(k, 0) for k, v in now.items() if v - statuses.get(k, 0)}
        if stored is not None:
            counts = store_counts(text)
            store_delta = {k: v - stored.get(k, 0) for k, v in counts.items()}
            backlog = _drain(server.metrics_port, counts["written"])
    run = Run(
        load=key,
        round=round_no,
        result=result,
        cpu_seconds=after.cpu_seconds - before.cpu_seconds,
        rss_after=after.rss_bytes,
        grpc=grpc_delta,
        scrapes=scraper.scrapes if scraper else 0,
        scrape_max_ms=max(scraper.seconds, default=0.0) * 1000 if scraper else 0.0,
        steal=_share(steal_before, steal_after),
        store=store_delta,
        store_backlog=backlog,
        window_seconds=window,
        db_cpu_seconds=cluster.cpu_seconds() - db_before if cluster is not None else None,
    )
    extra = f" grpc={grpc_delta}" if grpc_delta is not None else ""
    if store_delta is not None:
        extra += (
            f" store written={store_delta['written']} ({store_delta['written'] / window:.0f}/s)"
            f" dropped={store_delta['dropped']} failed={store_delta['failed']}"
            f" backlog={backlog} db_cpu={run.db_cpu_seconds:.2f}s"
        )
    errors = f" errors={result.errors}" if result.errors else ""
    _log(
        f"round {round_no} {server.name:<9} {key:<5} {result.throughput:8.1f} req/s "
        f"p50 {_p(result.latencies_us, 50):6.2f} ms p99 {_p(result.latencies_us, 99):7.2f} ms "
        f"cpu {run.cpu_seconds:5.2f} s steal {run.steal:4.0%}{errors}{extra}"
    )
    return run


def _drain(metrics_port: int, written: int, timeout: float = 15.0) -> int:
    """Wait until the trace store's writer has caught up (its written count stops moving for
    0.75 s); answer how many spans it wrote after the load ended."""
    deadline = time.monotonic() + timeout
    last, still = written, 0
    while time.monotonic() < deadline and still < 3:
        time.sleep(0.25)
        now = store_counts(fetch_metrics(metrics_port))["written"]
        still = still + 1 if now == last else 0
        last = now
    return last - written


def _share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def _p(latencies_us: list[int], q: float) -> float:
    return percentile(latencies_us, q) / 1000


def run_bench(settings: Settings) -> BenchRun:
    """Start everything, measure, stop everything; write the report; answer the results."""
    started = time.time()
    with contextlib.ExitStack() as stack:
        if settings.workdir is not None:
            workdir = settings.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aigw-bench-")))
        body = workdir / "complete-request.bin"
        body.write_bytes(grpc_frame(bench_request()))
        loader = Loader(workdir, body, tool=settings.tool)
        bench = BenchRun(
            machine=machine_info() | {"code measured": source_state(REPO)},
            versions=dict(package_versions()),
            settings=settings,
            tool=loader.tool,
            started=started,
        )
        skipped = settings.alt_scenarios()[1]
        if skipped:
            _log(
                f"not running {', '.join(skipped)} from {settings.alt_tree}: its aigw serve "
                "lacks an option they need"
            )
        _log(f"starting {', '.join(settings.servers())} (closed-loop load: {loader.tool})")
        running = stack.enter_context(_servers(settings, workdir))
        servers, sink = running.servers, running.sink
        for name, server in servers.items():
            scenario = scenario_of(name)
            command = " ".join(server.command).replace(str(workdir), "$WORKDIR")
            if scenario.store:
                command = "AIGW_DATABASE_URL=postgresql://… AIGW_CONFIG_KEY=… " + command
            bench.commands[name] = command
            if scenario.traces is not None:
                assert sink is not None
                configure_export(server, sink.urls[scenario.traces], sink.urls["live_metrics"])
            server.check(calls=3, stream=True)
            title = scenario.title
            if name.endswith(ALT):
                title += f"; gateway code from {settings.alt_tree}"
            bench.results[name] = ScenarioResult(
                name=name,
                title=title,
                command=server.command,
                pid=server.pid,
                workers=scenario.workers,
            )
        if sink is not None:
            bench.commands["otlp sink"] = "python -m tests.bench.otlp_sink"

        for name, server in servers.items():
            _log(f"warming up {name} for {settings.warmup:g} s")
            if settings.warmup > 0:
                loader.warm_up(server.port, settings.warmup)
            bench.results[name].rss_timeline.append(("after warm-up", server.stats().rss_bytes))

        names = list(servers)
        loads = settings.loads()
        steal_start = cpu_times()
        samples_per_round = -(-settings.stream_samples // settings.rounds)
        for round_no in range(1, settings.rounds + 1):
            shift = (round_no - 1) % len(names)
            order = names[shift:] + names[:shift]
            for load in loads:
                for name in order:
                    run = _measure(
                        servers[name],
                        scenario_of(name),
                        loader,
                        settings,
                        load,
                        round_no,
                        running.clusters.get(name),
                    )
                    result = bench.results[name]
                    result.runs.append(run)
                    result.rss_timeline.append((f"r{round_no} {load[0]}", run.rss_after))
                    bench.commands.setdefault(load[0], run.result.command)
            if settings.stream_samples > 0:
                for name in order:
                    streamed = loader.stream(
                        servers[name].port,
                        STREAM_ROUTE,
                        samples_per_round,
                        settings.stream_concurrency,
                        stagger_ms=settings.stream_delay_ms / settings.stream_concurrency,
                    )
                    bench.results[name].streams.append(streamed)
                    bench.commands.setdefault("stream", streamed.command)
                    _log(
                        f"round {round_no} {name:<9} stream: {streamed.requests} samples, "
                        f"TTFT p50 {_p(streamed.latencies_us, 50):.2f} ms"
                    )
            for name, server in servers.items():
                bench.results[name].rss_after_round.append(server.stats().rss_bytes)

        bench.steal = _share(steal_start, cpu_times())
        for name, server in servers.items():
            result = bench.results[name]
            final = server.stats()
            result.peak_rss = final.hwm_bytes
            result.processes = final.processes
            result.scrapes = sum(r.scrapes for r in result.runs)
            if server.metrics_port:
                result.export = export_counters(fetch_metrics(server.metrics_port))
        stack.close()  # stop servers and sink now: the sink reports on exit
        if sink is not None:
            bench.sink = sink.stats
        if any(scenario_of(n).store for n in servers) and (
            settings.fleet_sets > 0 or settings.fleet_batches > 0
        ):
            # On a machine the scenarios' servers have left (and in a workdir of its own:
            # closing the stack removed a temporary one).
            with (
                contextlib.nullcontext(str(settings.workdir / "fleet-extras"))
                if settings.workdir is not None
                else tempfile.TemporaryDirectory(prefix="aigw-bench-fleet-")
            ) as fleet_dir:
                bench.fleet = fleet.run_extras(
                    Path(fleet_dir), sets=settings.fleet_sets, batches=settings.fleet_batches
                )
            bench.commands["fleet store writes, convergence"] = (
                f"python -m tests.bench.fleet --sets {settings.fleet_sets} "
                f"--batches {settings.fleet_batches}"
            )
    bench.elapsed = time.time() - started
    # Other work on a shared machine shows here (steal only counts the hypervisor's).
    with contextlib.suppress(OSError), open("/proc/loadavg", encoding="ascii") as f:
        bench.machine["load average at end"] = " ".join(f.read().split()[:3])
    report.write(bench, settings)
    return bench


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="aigw benchmarks: baseline vs aigw with minimal and full telemetry "
        "(one and two serving processes), "
        "and in fleet mode (PostgreSQL).",
    )

    def csv_ints(text: str) -> tuple[int, ...]:
        return tuple(int(x) for x in text.split(",") if x)

    def csv_names(text: str) -> tuple[str, ...]:
        names = tuple(x for x in text.split(",") if x)
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}"
            )
        return names

    defaults = Settings(out=REPO / "BENCHMARKS.md")
    parser.add_argument("--out", type=Path, default=defaults.out, help="markdown report path")
    parser.add_argument("--scenarios", type=csv_names, default=defaults.scenarios)
    parser.add_argument("--concurrency", type=csv_ints, default=defaults.concurrency)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="0: no fixed-rate run")
    parser.add_argument("--duration", type=float, default=defaults.duration)
    parser.add_argument("--rate-duration", type=float, default=defaults.rate_duration)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--warmup", type=float, default=defaults.warmup)
    parser.add_argument("--stream-samples", type=int, default=defaults.stream_samples)
    parser.add_argument("--stream-delay-ms", type=float, default=defaults.stream_delay_ms)
    parser.add_argument("--stream-concurrency", type=int, default=defaults.stream_concurrency)
    parser.add_argument("--load", dest="tool", choices=["auto", "h2load", "python"], default="auto")
    parser.add_argument("--workdir", type=Path, help="keep logs and state here (default: temp)")
    parser.add_argument(
        "--fleet-sets",
        type=int,
        default=defaults.fleet_sets,
        help="with the fleet scenario: SetOtelConfig calls timed for convergence (0: skip)",
    )
    parser.add_argument(
        "--fleet-batches",
        type=int,
        default=defaults.fleet_batches,
        help="with the fleet scenario: 512-span batches per store in the write test (0: skip)",
    )
    parser.add_argument(
        "--alt-tree",
        type=Path,
        help="a copy of the repo with a change: its aigw runs beside this one, as NAME@alt",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return Settings(**vars(args))


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    bench = run_bench(settings)
    for line in report.summary_lines(bench, settings):
        print(line, flush=True)
    print(f"wrote {settings.out} in {bench.elapsed:.0f} s", flush=True)
    return 0
