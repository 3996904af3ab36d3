"""Fleet mode measured: the PostgreSQL trace store's write rate, and config convergence.

    python -m tests.bench.fleet                 # both; prints FLEET lines and the markdown
    python -m tests.bench.fleet --sets 0        # the store micro-benchmark only

`make bench` runs the `fleet` scenario (scenarios.py: as full, with trace store and OTEL config
in PostgreSQL) and then, in the same run, the two measurements here:

- `store_writes`: spans per second through `TraceStore.write` in batches of 512 — the batch the
  gateway's trace-store processor writes when it is busy — of GenAI-shaped spans (a server span
  and its `chat` child per request, with the attributes a bench call gets), into
  `SqliteTraceStore` (the embedded default) and `PostgresTraceStore` (once with PostgreSQL's
  durable defaults, once with `synchronous_commit=off` through the URL's `options`),
  interleaved batch by batch so drift of the machine lands on each alike. The store's own
  encoding of each span is inside the timing, as it is in the gateway.
- `convergence`: three `aigw serve` replicas on one database, `heartbeat_seconds` at its
  default; each Set goes to one replica (rotating) and the other two are polled with
  GetOtelConfig every 5 ms until they report the new version. Idle replicas, no load.

PostgreSQL: `BenchPostgres`, the cluster of `tests/postgres.py` (a real PostgreSQL on a free
loopback port, password authentication over TCP) but with PostgreSQL's durable defaults
(`fsync`, `full_page_writes` and `synchronous_commit` on), as an operator runs it: the test
cluster turns them off for speed. Its CPU (postmaster, backends, background workers) is read
from /proc, since on a 2-core machine it competes with the gateway.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
from aigw.v1 import admin_pb2, admin_pb2_grpc, otel_config_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, set_span_in_context

from admin.secret_box import new_key
from gateway.config import StoreConfig

# Imported when the bench starts, as its gateways do: the code measured is the code they run.
from gateway.telemetry.trace_store_postgres import PostgresTraceStore
from gateway.telemetry.trace_store_sqlite import SqliteTraceStore
from tests.bench.measure import percentile, tree_cpu_seconds
from tests.bench.servers import (
    ServerError,
    ServerProcess,
    SinkProcess,
    StoreEnv,
    start_aigw,
    start_sink,
)
from tests.postgres import PostgresCluster

__all__ = [
    "BenchPostgres",
    "ConvergenceResult",
    "FleetExtras",
    "StoreWriteResult",
    "convergence",
    "main",
    "run_extras",
    "sqlite_and_postgres",
    "store_writes",
]

# The gateway's defaults (gateway/config.py), so retention does what it does in production.
MAX_SPANS = 100_000
MAX_AGE_SECONDS = 168 * 3600.0
BATCH = 512
TARGET_MS = 1000.0  # the fleet issue: "applied by every replica within 1 s"
POLL_SECONDS = 0.005
CONVERGE_TIMEOUT = 15.0


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- PostgreSQL ------------------------------------------------------------------------------


class BenchPostgres(PostgresCluster):
    """`tests.postgres.PostgresCluster` with PostgreSQL's durable defaults (see the module
    docstring), and its CPU time."""

    SETTINGS = "fsync, full_page_writes and synchronous_commit on (the defaults)"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self._root / "log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def cpu_seconds(self) -> float:
        """CPU seconds the whole cluster used since it started."""
        try:
            return tree_cpu_seconds(self.postmaster_pid())
        except (OSError, ValueError, IndexError):
            return 0.0

    def version(self) -> str:
        with psycopg.connect(self.url()) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'}"


@contextlib.contextmanager
def postgres() -> Iterator[BenchPostgres]:
    cluster = BenchPostgres()
    try:
        yield cluster
    finally:
        cluster.close()


# --- spans like the gateway's ----------------------------------------------------------------


class _Discard(SpanProcessor):
    pass


class SpanFactory:
    """Real SDK spans shaped like the two a bench Complete call leaves in the trace store: the
    server span (9 attributes) and its `chat echo-1` child (13), each trace new."""

    def __init__(self, replica: str = "bench-micro") -> None:
        resource = Resource({"service.instance.id": replica, "service.name": "aigw"})
        self._provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._provider.add_span_processor(_Discard())
        self._tracer = self._provider.get_tracer("aigw")
        self._n = 0

    def pair(self, start_ns: int) -> list[ReadableSpan]:
        self._n += 1
        server = self._tracer.start_span(
            "aigw.v1.Completion/Complete",
            kind=SpanKind.SERVER,
            start_time=start_ns,
            attributes={
                "rpc.system.name": "grpc",
                "rpc.method": "aigw.v1.Completion/Complete",
                "server.address": "127.0.0.1",
                "server.port": 50051,
                "network.peer.address": "127.0.0.1",
                "network.peer.port": 30000 + self._n % 30000,
                "aigw.route": "echo",
                "aigw.metadata.tenant": "bench",
            },
        )
        chat = self._tracer.start_span(
            "chat echo-1",
            context=set_span_in_context(server),
            kind=SpanKind.CLIENT,
            start_time=start_ns + 50_000,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "echo",
                "gen_ai.request.model": "echo-1",
                "aigw.route": "echo",
                "gen_ai.request.stream": False,
                "gen_ai.request.max_tokens": 256,
                "gen_ai.request.temperature": 0.2,
            },
        )
        chat.set_attribute("gen_ai.response.model", "echo-1")
        chat.set_attribute("gen_ai.response.id", f"echo-{os.urandom(16).hex()}")
        chat.set_attribute("gen_ai.response.finish_reasons", ("stop",))
        chat.set_attribute("gen_ai.usage.input_tokens", 17)
        chat.set_attribute("gen_ai.usage.output_tokens", 10)
        chat.end(end_time=start_ns + 250_000)
        server.set_attribute("rpc.response.status_code", "OK")
        server.end(end_time=start_ns + 400_000)
        # The processor sees children end first, as the gateway ends them.
        return [chat, server]  # type: ignore[list-item]

    def batch(self, size: int) -> list[ReadableSpan]:
        now = time.time_ns()
        spans: list[ReadableSpan] = []
        while len(spans) < size:
            spans += self.pair(now + len(spans) * 1_000_000)
        return spans[:size]


# --- the store micro-benchmark ---------------------------------------------------------------


@dataclass
class StoreWriteResult:
    name: str
    batch_size: int
    seconds: list[float] = field(default_factory=list)  # wall time of each write()
    client_cpu: float = 0.0  # CPU of the writing thread (encoding, driver)
    server_cpu: float = 0.0  # PostgreSQL's CPU while this store wrote (0 for SQLite)

    @property
    def spans(self) -> int:
        return len(self.seconds) * self.batch_size

    @property
    def spans_per_second(self) -> float:
        total = sum(self.seconds)
        return self.spans / total if total > 0 else 0.0

    def batch_ms(self, q: float) -> float:
        return percentile(sorted(self.seconds), q) * 1000

    def cpu_us_per_span(self) -> tuple[float, float]:
        """(this process, PostgreSQL) CPU µs per span."""
        n = self.spans or 1
        return self.client_cpu / n * 1e6, self.server_cpu / n * 1e6


def store_writes(
    cluster: BenchPostgres, workdir: Path, *, batches: int, batch_size: int = BATCH
) -> list[StoreWriteResult]:
    """Write the same `batches` batches into each store, interleaved, after one warm-up batch
    each (the first write of a PostgreSQL store connects and migrates)."""
    factory = SpanFactory()
    work = [factory.batch(batch_size) for _ in range(batches + 1)]
    durable = cluster.create_database("micro")
    relaxed = cluster.create_database("micro_async")
    relaxed += "?options=-c%20synchronous_commit%3Doff"
    home = workdir / "store-micro"
    home.mkdir(parents=True, exist_ok=True)
    stores = {
        "SQLite (embedded, WAL, synchronous=NORMAL)": SqliteTraceStore.open(
            home / "traces.db", max_spans=MAX_SPANS, max_age_seconds=MAX_AGE_SECONDS
        ),
        "PostgreSQL": PostgresTraceStore.open(
            durable, max_spans=MAX_SPANS, max_age_seconds=MAX_AGE_SECONDS, replica="bench-micro"
        ),
        "PostgreSQL, synchronous_commit=off": PostgresTraceStore.open(
            relaxed, max_spans=MAX_SPANS, max_age_seconds=MAX_AGE_SECONDS, replica="bench-micro"
        ),
    }
    results = {name: StoreWriteResult(name, batch_size) for name in stores}
    names = list(stores)
    try:
        for store in stores.values():
            store.write(work[0])
        for i, batch in enumerate(work[1:]):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                db_before = cluster.cpu_seconds() if "PostgreSQL" in name else 0.0
                cpu_before = time.thread_time()
                started = time.perf_counter()
                stores[name].write(batch)
                elapsed = time.perf_counter() - started
                result = results[name]
                result.client_cpu += time.thread_time() - cpu_before
                if "PostgreSQL" in name:
                    result.server_cpu += cluster.cpu_seconds() - db_before
                result.seconds.append(elapsed)
    finally:
        for store in stores.values():
            store.close()
    return list(results.values())


# --- convergence -----------------------------------------------------------------------------


@dataclass
class SetTiming:
    setter: int  # which replica took the Set (0-based)
    version: int
    set_ms: float  # the Set call itself
    applied_ms: list[float | None]  # per other replica: from the Set's start; None: timed out
    # From the Set's start until ListReplicas on the setter answers converged on this version
    # (polled after the others applied it); None: not within the timeout.
    listed_ms: float | None = None

    @property
    def all_ms(self) -> float:
        """Until the last of the others reported the version (inf when one never did)."""
        if any(x is None for x in self.applied_ms):
            return float("inf")
        return max(x for x in self.applied_ms if x is not None)


@dataclass
class ConvergenceResult:
    replicas: int
    heartbeat_seconds: float
    sets: list[SetTiming] = field(default_factory=list)
    # ListReplicas after the last Set: converged flag and current version.
    listing: str = ""
    # WARNING/ERROR lines the replicas logged (secrets never reach a log; see the tests).
    log_problems: list[str] = field(default_factory=list)

    def totals_ms(self) -> list[float]:
        return sorted(s.all_ms for s in self.sets)

    def timeouts(self) -> int:
        return sum(1 for s in self.sets if s.all_ms == float("inf"))


def _set_request(sink: SinkProcess, i: int) -> admin_pb2.SetOtelConfigRequest:
    """Export traces to the live sink, with a header (sealed with the Fernet key in the
    database) and compression that changes every Set, so every version differs."""
    gzip, none = otel_config_pb2.COMPRESSION_GZIP, otel_config_pb2.COMPRESSION_NONE
    traces = otel_config_pb2.ExporterConfig(
        enabled=True,
        protocol=otel_config_pb2.PROTOCOL_HTTP,
        endpoint=sink.urls["live_traces"],
        encoding=otel_config_pb2.ENCODING_PROTO,
        headers={"x-api-key": f"bench-{i % 2}"},
        compression=gzip if i % 2 else none,
    )
    return admin_pb2.SetOtelConfigRequest(config=otel_config_pb2.OtelConfig(traces=traces))


def _version(server: ServerProcess) -> int:
    stub = admin_pb2_grpc.AdminServiceStub(server.channel)
    return stub.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5).version


def _wait_version(server: ServerProcess, version: int, t0: float) -> float | None:
    deadline = t0 + CONVERGE_TIMEOUT
    while True:
        try:
            seen = _version(server)
        except grpc.RpcError:
            seen = -1
        now = time.perf_counter()
        if seen >= version:
            return (now - t0) * 1000
        if now > deadline:
            return None
        time.sleep(POLL_SECONDS)


def _wait_listed(server: ServerProcess, version: int, t0: float) -> float | None:
    stub = admin_pb2_grpc.AdminServiceStub(server.channel)
    deadline = t0 + CONVERGE_TIMEOUT
    while True:
        try:
            listing = stub.ListReplicas(admin_pb2.ListReplicasRequest(), timeout=5)
            done = listing.converged and listing.current_version >= version
        except grpc.RpcError:
            done = False
        now = time.perf_counter()
        if done:
            return (now - t0) * 1000
        if now > deadline:
            return None
        time.sleep(0.02)


def convergence(
    cluster: BenchPostgres, workdir: Path, *, sets: int, replicas: int = 3, seed: int = 7
) -> ConvergenceResult:
    """`sets` SetOtelConfig calls, each on one replica in turn, each timed until every other
    replica's GetOtelConfig reports the new version. Pauses of 0.2–0.7 s (seeded) between Sets
    so they fall at every phase of the replicas' version checks."""
    store = StoreEnv(cluster.create_database("converge"), new_key())
    home = workdir / "convergence"
    home.mkdir(parents=True, exist_ok=True)
    result = ConvergenceResult(replicas, StoreConfig().heartbeat_seconds)
    servers: list[ServerProcess] = []
    sink: SinkProcess | None = None
    try:
        with ThreadPoolExecutor(max_workers=replicas + 1) as pool:
            sink_future = pool.submit(start_sink, home)
            futures = [
                pool.submit(start_aigw, f"replica-{i + 1}", home, 50.0, store=store)
                for i in range(replicas)
            ]
            errors = []
            for future in futures:
                try:
                    servers.append(future.result())
                except ServerError as e:
                    errors.append(e)
            sink = sink_future.result()
            if errors:
                raise errors[0]
        for server in servers:
            server.check(calls=1)
        rng = random.Random(seed)
        # One unmeasured Set first: it opens the setter's first commit connection.
        for i in range(-1, sets):
            setter = i % replicas
            time.sleep(rng.uniform(0.2, 0.7))
            stub = admin_pb2_grpc.AdminServiceStub(servers[setter].channel)
            t0 = time.perf_counter()
            try:
                version = stub.SetOtelConfig(_set_request(sink, i), timeout=30).version
            except grpc.RpcError as e:
                raise ServerError(f"SetOtelConfig failed: {e.code()} {e.details()}") from e
            set_ms = (time.perf_counter() - t0) * 1000
            others = [s for j, s in enumerate(servers) if j != setter]
            with ThreadPoolExecutor(max_workers=len(others)) as pool:
                futures = [pool.submit(_wait_version, s, version, t0) for s in others]
                applied = [f.result() for f in futures]
            if i < 0:
                continue
            listed = _wait_listed(servers[setter], version, t0)
            timing = SetTiming(setter, version, set_ms, applied, listed)
            result.sets.append(timing)
            shown = ", ".join("timeout" if x is None else f"{x:.0f}" for x in applied)
            _log(
                f"fleet set {i + 1:>2} on replica {setter + 1} → v{version}: set {set_ms:.0f} ms, "
                f"others applied at {shown} ms, ListReplicas converged at "
                f"{'timeout' if listed is None else f'{listed:.0f}'} ms"
            )
        stub = admin_pb2_grpc.AdminServiceStub(servers[0].channel)
        listing = stub.ListReplicas(admin_pb2.ListReplicasRequest(), timeout=10)
        result.listing = (
            f"ListReplicas afterwards: {len(listing.replicas)} replicas, current version "
            f"{listing.current_version}, converged {str(listing.converged).lower()}"
        )
    finally:
        with ThreadPoolExecutor(max_workers=len(servers) or 1) as pool:
            for server in servers:
                pool.submit(server.stop)
        if sink is not None:
            sink.stop()
    for server in servers:
        for line in server.log.read_text(errors="replace").splitlines():
            if " WARNING " in line or " ERROR " in line or "Traceback" in line:
                result.log_problems.append(f"{server.name}: {line.strip()[:300]}")
    return result


# --- both, and their report -----------------------------------------------------------------


@dataclass
class FleetExtras:
    postgres: str = ""
    writes: list[StoreWriteResult] = field(default_factory=list)
    convergence: ConvergenceResult | None = None
    elapsed: float = 0.0


def run_extras(workdir: Path, *, sets: int, batches: int) -> FleetExtras:
    started = time.time()
    extras = FleetExtras()
    with postgres() as cluster:
        extras.postgres = f"{cluster.version()}, {BenchPostgres.SETTINGS}"
        if batches > 0:
            _log(f"fleet: trace store writes, {batches} batches of {BATCH} spans per store")
            extras.writes = store_writes(cluster, workdir, batches=batches)
            for w in extras.writes:
                _log(f"fleet: {w.name}: {w.spans_per_second:,.0f} spans/s")
        if sets > 0:
            _log(f"fleet: config convergence, {sets} Sets on 3 replicas")
            extras.convergence = convergence(cluster, workdir, sets=sets)
    extras.elapsed = time.time() - started
    return extras


def sqlite_and_postgres(
    extras: FleetExtras,
) -> tuple[StoreWriteResult | None, StoreWriteResult | None]:
    """The SQLite result and the durable PostgreSQL one, the pair the ratio is of."""
    sqlite = next((w for w in extras.writes if w.name.startswith("SQLite")), None)
    pg = next((w for w in extras.writes if w.name == "PostgreSQL"), None)
    return sqlite, pg


def main(argv: Sequence[str] | None = None) -> int:
    from tests.bench import report

    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.fleet",
        description="Fleet mode: PostgreSQL trace store writes vs SQLite, config convergence.",
    )
    parser.add_argument("--sets", type=int, default=20, help="Sets to time (0: skip)")
    parser.add_argument("--batches", type=int, default=60, help="batches per store (0: skip)")
    parser.add_argument("--workdir", type=Path, help="keep logs and state here (default: temp)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            workdir = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aigw-fleet-")))
        extras = run_extras(workdir, sets=args.sets, batches=args.batches)
    for line in report.fleet_summary_lines(extras):
        print(line, flush=True)
    print()
    print("\n".join(report.fleet_extras(extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
