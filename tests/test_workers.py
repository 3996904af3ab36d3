"""`aigw serve --workers 2`: two serving processes on one port, one telemetry process.

What an operator relies on when the gateway runs several processes: a call is counted and
stored once whichever serving process took it; an admin change made through one applies to
all; a dead child is restarted without failing calls it did not hold; SIGTERM loses nothing.

Which serving process took a call is read from the kernel, not inferred: each serving
process's sockets (`/proc/PID/fd` links `socket:[INODE]`) against the established TCP
connections on the gateway port (`/proc/net/tcp*`). Calls are told apart by their trace id: each
carries its own `traceparent`, so a span at a receiver or a trace in the store names its call.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aigw.v1 import admin_pb2, completion_pb2_grpc, otel_config_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry.trace_store_sqlite import SqliteTraceStore
from tests.clients import Client, traceparent
from tests.conftest import chat
from tests.openai_stub import OpenAIStub, Reply
from tests.otlp_receivers import HttpOtlpReceiver
from tests.processes import start_gateway_process, stop_process

WORKERS = 2
BOUND = 30.0  # generous: how fast is a benchmark's business, not a test's
COMPLETE = "aigw.v1.Completion/Complete"
# The supervisor's start-up line names its children; a restart names the new serving process.
_PIDS = re.compile(r"serving process\(es\), pids ([\d,]+); telemetry process pid (\d+)")
_RESTARTED = "serving process {index} restarted as pid (\\d+)"
# grpcio shares one TCP connection among all channels of a process to the same target (its
# global subchannel pool): a channel of its own makes each channel a connection of its own,
# which the kernel hands to one of the serving processes.
_OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
_SERVER = trace_pb2.Span.SPAN_KIND_SERVER
_CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT


@dataclass
class WorkerGateway:
    proc: asyncio.subprocess.Process
    port: int
    metrics_port: int
    workers: list[int]  # serving process pids, in index order
    telemetry: int

    def log(self) -> str:
        return "".join(self.proc.log_lines)  # type: ignore[attr-defined]


async def _start(state_dir: Path, env: dict[str, str] | None = None, *args: str) -> WorkerGateway:
    proc, port, metrics_port = await start_gateway_process(
        "--workers", str(WORKERS), *args, state_dir=state_dir, env=env
    )
    match = _PIDS.search("".join(proc.log_lines))  # type: ignore[attr-defined]
    assert match, "the start-up line names no pids"
    workers = [int(pid) for pid in match.group(1).split(",")]
    assert len(workers) == WORKERS
    return WorkerGateway(proc, port, metrics_port, workers, int(match.group(2)))


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {BOUND}s: {what}")
        await asyncio.sleep(0.1)


def _running(pid: int) -> bool:
    """False once `pid` has exited and its sockets are closed.

    A zombie alone is not enough: after SIGKILL the main thread turns zombie while other
    threads may still be exiting, and the file table (the listening socket with it) is
    released by the last of them. A connection made in between is reset.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False  # reaped
    return state not in ("Z", "X") or threads != [str(pid)]


async def _exited(pid: int) -> None:
    deadline = time.monotonic() + BOUND
    while _running(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {pid} still running {BOUND}s after SIGKILL")
        await asyncio.sleep(0.01)


# --- who holds which connection: the kernel's word -----------------------------------------


def _established(port: int) -> set[int]:
    """Socket inodes of the gateway's end of every established TCP connection on `port`."""
    inodes = set()
    # gRPC binds 127.0.0.1 on a dual-stack socket: its connections are listed in tcp6.
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                    inodes.add(int(fields[9]))
    return inodes


def _sockets_of(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[len("socket:[") : -1]))
    return inodes


def _connect(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_OWN_CONNECTION)


async def _open_on_a_new_connection(
    port: int, pids: Iterable[int], first_call: Callable[[grpc.aio.Channel], Awaitable[object]]
) -> tuple[grpc.aio.Channel, int]:
    """A channel of its own and the pid of the serving process that took its connection.

    Nothing else may connect to the gateway meanwhile: the new connection is told by diff.
    """
    before = _established(port)
    channel = _connect(port)
    await first_call(channel)
    new = _established(port) - before
    owners = [pid for pid in pids if _sockets_of(pid) & new]
    assert len(new) == 1, f"{len(new)} new connections for one channel"
    assert len(owners) == 1, f"the new connection is held by {owners}"
    return channel, owners[0]


# --- calls that can be found again -----------------------------------------------------------


@dataclass
class Calls:
    """Completion calls, each its own trace: a trace id names the call at a receiver or store."""

    tag: int = field(default_factory=lambda: random.getrandbits(32))
    numbers: itertools.count[int] = field(default_factory=itertools.count)
    answered: list[str] = field(default_factory=list)  # trace ids, in answer order

    def trace_id(self, n: int) -> str:
        return f"{self.tag:08x}{n + 1:024x}"

    def ours(self, trace_id: str) -> bool:
        return trace_id.startswith(f"{self.tag:08x}")

    async def make(self, channel: grpc.aio.Channel, model: str = "echo") -> str:
        trace_id = self.trace_id(next(self.numbers))
        stub = completion_pb2_grpc.CompletionStub(channel)
        await stub.Complete(chat("w", model=model), metadata=traceparent(trace_id), timeout=10)
        self.answered.append(trace_id)
        return trace_id


async def _spread(
    port: int, pids: list[int], calls: Calls, per_worker: int = 2
) -> list[tuple[grpc.aio.Channel, int]]:
    """Channels, each on a connection of its own, until each of `pids` holds `per_worker`
    of them (each channel made one call). The kernel picks the serving process; 64 channels
    all to one of two processes is a 2**-63 chance."""
    opened: list[tuple[grpc.aio.Channel, int]] = []
    while min(Counter(pid for _, pid in opened)[pid] for pid in pids) < per_worker:
        assert len(opened) < 64, Counter(pid for _, pid in opened)
        opened.append(await _open_on_a_new_connection(port, pids, calls.make))
    return opened


async def _close(channels: Iterable[grpc.aio.Channel]) -> None:
    for channel in channels:
        await channel.close()


# --- what the gateway says: /metrics, ListTraces, the receiver, the store file ---------------


def _scrape_now(metrics_port: int) -> str:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()  # type: ignore[no-any-return]


async def _scrape(metrics_port: int) -> str:
    return await asyncio.to_thread(_scrape_now, metrics_port)


def _metric(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _completions_counted(text: str) -> float:
    return _metric(text, "rpc_server_call_duration_seconds_count", rpc_method=COMPLETE)


def _restarts(text: str, process: str) -> float:
    return _metric(text, "aigw_process_restarts_total", process=process)


async def _listed(channel: grpc.aio.Channel) -> Counter[str]:
    """Trace id -> spans held, for every trace ListTraces lists (all pages)."""
    client = Client(channel)
    held: Counter[str] = Counter()
    token = ""
    while True:
        page = await client.admin.ListTraces(
            admin_pb2.ListTracesRequest(model="echo", page_size=1000, page_token=token), timeout=10
        )
        for trace in page.traces:
            assert trace.trace_id not in held, f"{trace.trace_id} listed twice"
            held[trace.trace_id] = trace.span_count
        token = page.next_page_token
        if not token:
            return held


def _exported(receiver: HttpOtlpReceiver, calls: Calls) -> dict[str, Counter[tuple[str, int]]]:
    """Our trace id -> Counter of (span id, kind) for every span the receiver acknowledged."""
    spans: dict[str, Counter[tuple[str, int]]] = {}
    for request in receiver.trace_requests():
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    trace_id = span.trace_id.hex()
                    if calls.ours(trace_id):
                        spans.setdefault(trace_id, Counter())[(span.span_id.hex(), span.kind)] += 1
    return spans


def _exported_count(receiver: HttpOtlpReceiver, calls: Calls) -> int:
    return sum(sum(c.values()) for c in _exported(receiver, calls).values())


def _assert_exported_once(receiver: HttpOtlpReceiver, calls: Calls) -> None:
    """Every answered call's SERVER and CLIENT span at the receiver, each exactly once, and
    nothing of ours besides."""
    exported = _exported(receiver, calls)
    missing = [t for t in calls.answered if t not in exported]
    assert not missing, f"{len(missing)} of {len(calls.answered)} calls not exported"
    assert set(exported) == set(calls.answered)
    for trace_id, spans in exported.items():
        twice = [key for key, n in spans.items() if n != 1]
        assert not twice, f"{trace_id}: spans exported more than once: {twice}"
        assert sorted(kind for _, kind in spans) == sorted([_SERVER, _CLIENT]), trace_id


def _stored_in_file(state_dir: Path) -> Counter[str]:
    """Trace id -> spans held, read from the SQLite store after the gateway stopped."""
    held: Counter[str] = Counter()
    with SqliteTraceStore.open(
        state_dir / "traces.db", max_spans=10**6, max_age_seconds=1e9
    ) as store:
        token = ""
        while True:
            page, token = store.list_traces(page_size=1000, page_token=token)
            for summary in page:
                spans = store.get_trace(summary.trace_id)
                assert sorted(s.kind for s in spans) == ["CLIENT", "SERVER"], summary.trace_id
                held[summary.trace_id] = len(spans)
            if not token:
                return held


async def _sigterm(gw: WorkerGateway) -> None:
    gw.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(BOUND):
        assert await gw.proc.wait() == 0, gw.log()[-3000:]


# --- the tests -----------------------------------------------------------------------------


async def test_calls_over_both_workers_are_counted_and_stored_once(tmp_path: Path) -> None:
    gw = await _start(tmp_path)
    calls = Calls()
    try:
        opened = await _spread(gw.port, gw.workers, calls, per_worker=3)
        # More calls on every connection: both processes take a share of them.
        for _ in range(3):
            for channel, _ in opened:
                await calls.make(channel)
        per_worker = Counter(pid for _, pid in opened)
        assert set(per_worker) == set(gw.workers)
        # Read your writes across processes: no wait, the listing already holds every call,
        # whichever process served it and whichever process forwards the ListTraces.
        held = await _listed(opened[-1][0])
        # After the listing every record is in the telemetry process: /metrics shows them all.
        scraped = await _scrape(gw.metrics_port)
        await _close(channel for channel, _ in opened)
    finally:
        await stop_process(gw.proc)
    n = len(calls.answered)
    assert n == 4 * len(opened)
    assert set(held) == set(calls.answered)
    assert all(spans == 2 for spans in held.values()), held
    assert _completions_counted(scraped) == n


async def test_set_otel_config_through_one_worker_exports_from_both(tmp_path: Path) -> None:
    gw = await _start(tmp_path)
    calls = Calls()
    opened: list[tuple[grpc.aio.Channel, int]] = []
    try:
        with HttpOtlpReceiver() as receiver:
            section = otel_config_pb2.ExporterConfig(enabled=True, endpoint=receiver.traces_url)
            config = otel_config_pb2.OtelConfig(traces=section)
            versions: list[int] = []

            async def set_config(channel: grpc.aio.Channel) -> None:
                versions.append((await Client(channel).set(config)).version)

            # The Set goes over a connection of its own: one serving process forwards it.
            set_channel, set_by = await _open_on_a_new_connection(gw.port, gw.workers, set_config)
            opened = [(set_channel, set_by)]
            # Then calls over connections to both, the one that did not forward the Set too.
            opened += await _spread(gw.port, gw.workers, calls, per_worker=3)
            for _ in range(2):
                for channel, _ in opened:
                    await calls.make(channel)
            # Every other connection, on either process, reads the new version.
            for channel, _ in opened[1:]:
                assert (await Client(channel).get()).version == versions[0]

            async def all_arrived() -> bool:
                return _exported_count(receiver, calls) >= 2 * len(calls.answered)

            # Exported while the gateway runs, not only by the flush at stop.
            await _until(all_arrived, "every call's spans at the receiver")
            await _close(channel for channel, _ in opened)
            # Then stop (SIGTERM flushes every exporter): any span sent twice is there now.
            await _sigterm(gw)
            _assert_exported_once(receiver, calls)
    finally:
        await stop_process(gw.proc)
    assert versions[0] >= 1
    assert {pid for _, pid in opened[1:]} == set(gw.workers)
    # One call per channel as it was opened (not the Set's), then two rounds over all.
    assert len(calls.answered) == len(opened) - 1 + 2 * len(opened)


@dataclass
class Load:
    """Steady Completion calls, one loop per channel, until stopped; every failure is kept."""

    calls: Calls
    channels: list[grpc.aio.Channel]
    failures: list[str] = field(default_factory=list)
    started: dict[str, float] = field(default_factory=dict)  # trace id -> monotonic start
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._run(c)) for c in self.channels]

    async def _run(self, channel: grpc.aio.Channel) -> None:
        stub = completion_pb2_grpc.CompletionStub(channel)
        while not self.stop.is_set():
            trace_id = self.calls.trace_id(next(self.calls.numbers))
            self.started[trace_id] = time.monotonic()
            try:
                await stub.Complete(chat("load"), metadata=traceparent(trace_id), timeout=5)
                self.calls.answered.append(trace_id)
            except grpc.aio.AioRpcError as e:
                self.failures.append(f"{e.code().name}: {e.details()}")
            await asyncio.sleep(0.01)  # steady, not a flood: the records must stay queueable

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    def started_after(self, at: float) -> list[str]:
        return [t for t, started in self.started.items() if started > at]


async def test_killed_telemetry_process_is_restarted_and_no_call_fails(tmp_path: Path) -> None:
    gw = await _start(tmp_path)
    calls = Calls()
    opened: list[tuple[grpc.aio.Channel, int]] = []
    try:
        opened = await _spread(gw.port, gw.workers, calls, per_worker=2)
        load = Load(calls, [channel for channel, _ in opened])
        load.start()
        await asyncio.sleep(0.5)
        os.kill(gw.telemetry, signal.SIGKILL)
        await _exited(gw.telemetry)
        killed = time.monotonic()
        await asyncio.sleep(2.0)  # the load goes on while the telemetry process is away

        restarted_scrape = ""

        async def restart_shown() -> bool:
            nonlocal restarted_scrape
            try:
                restarted_scrape = await _scrape(gw.metrics_port)
            except (urllib.error.URLError, ConnectionError):
                return False  # not back yet: the side-port answers again on the same port
            return _restarts(restarted_scrape, "telemetry") >= 1

        await _until(restart_shown, "aigw_process_restarts_total{process=telemetry} 1")
        await asyncio.sleep(0.5)  # calls after the restart too
        await load.finish()
        assert load.failures == []

        async def admin_back() -> bool:
            # Through both serving processes: each forwards on a channel of its own, and
            # each reconnects to the new telemetry process in its own time.
            for channel, _ in opened:
                try:
                    await Client(channel).get()
                except grpc.aio.AioRpcError as e:
                    if e.code() is not grpc.StatusCode.UNAVAILABLE:
                        raise
                    return False
            return True

        # Admin calls are forwarded again (the forwarding channels reconnect by themselves).
        await _until(admin_back, "AdminService answering again through both workers")
        after_kill = load.started_after(killed)
        held: Counter[str] = Counter()

        async def all_stored() -> bool:
            nonlocal held
            held = await _listed(opened[-1][0])
            return all(t in held for t in after_kill)

        # Every call that began after the kill, during the outage or after the restart, is
        # stored: its records can only have gone to the new telemetry process. Waited for,
        # because calls still running at the restart may end after the first listing.
        await _until(all_stored, "every call begun after the kill listed")
        scraped = await _scrape(gw.metrics_port)
        await _close(channel for channel, _ in opened)
    finally:
        await stop_process(gw.proc)
    assert _restarts(restarted_scrape, "telemetry") == 1
    assert _restarts(scraped, "worker") == 0
    # Records held by the serving processes while it was away were delivered, none dropped
    # (the series is absent until something is: a drop under any reason shows here).
    assert _metric(scraped, "aigw_telemetry_records_dropped_total") == 0
    assert len(after_kill) > 20, len(after_kill)
    # Stored whole and once (a trace listed twice fails `_listed`).
    assert all(held[t] == 2 for t in after_kill)
    assert set(held) <= set(calls.answered)


async def test_list_traces_right_after_a_telemetry_restart_sees_new_calls(tmp_path: Path) -> None:
    gw = await _start(tmp_path)
    calls = Calls()
    opened: list[tuple[grpc.aio.Channel, int]] = []
    try:
        opened = await _spread(gw.port, gw.workers, calls, per_worker=1)
        os.kill(gw.telemetry, signal.SIGKILL)
        await _exited(gw.telemetry)

        async def admin_back() -> bool:
            try:
                await Client(opened[0][0]).get()
            except grpc.aio.AioRpcError:
                return False
            return True

        await _until(admin_back, "AdminService answering again")
        # The gateway is back: a call through each serving process, then a listing.
        made = [await calls.make(channel) for channel, _ in opened]
        held = await _listed(opened[0][0])
        await _close(channel for channel, _ in opened)
    finally:
        await stop_process(gw.proc)
    assert [t in held for t in made] == [True] * len(made)


async def test_killed_worker_is_restarted_and_the_other_keeps_serving(tmp_path: Path) -> None:
    gw = await _start(tmp_path)
    calls = Calls()
    victim, survivor = gw.workers
    opened: list[tuple[grpc.aio.Channel, int]] = []
    fresh_failures: list[tuple[float, str]] = []  # (monotonic start, failure)
    fresh_started: list[float] = []
    try:
        opened = await _spread(gw.port, gw.workers, calls, per_worker=2)
        # Load on connections the survivor holds: not one of these calls may fail.
        load = Load(calls, [channel for channel, pid in opened if pid == survivor])
        stop = asyncio.Event()

        async def fresh_calls() -> None:
            """A new connection per call: after the kill the kernel hands each to a live
            process, so these must all succeed too."""
            while not stop.is_set():
                started = time.monotonic()
                fresh_started.append(started)
                async with _connect(gw.port) as channel:
                    try:
                        await calls.make(channel)
                    except grpc.aio.AioRpcError as e:
                        fresh_failures.append((started, f"{e.code().name}: {e.details()}"))
                await asyncio.sleep(0.01)

        load.start()
        fresh = asyncio.create_task(fresh_calls())
        await asyncio.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        await _exited(victim)
        killed = time.monotonic()

        async def restart_shown() -> bool:
            return _restarts(await _scrape(gw.metrics_port), "worker") >= 1

        await _until(restart_shown, "aigw_process_restarts_total{process=worker} 1")
        await asyncio.sleep(0.5)
        stop.set()
        await fresh
        await load.finish()
        assert load.failures == []
        assert sum(1 for started in fresh_started if started > killed) > 5
        # A fresh call in flight at the kill may have been on the victim's connection: that
        # one (the fresh calls run one at a time) may fail, with UNAVAILABLE; none begun after.
        assert [failure for started, failure in fresh_failures if started > killed] == []
        assert len(fresh_failures) <= 1, fresh_failures
        assert all(f.startswith("UNAVAILABLE") for _, f in fresh_failures), fresh_failures

        # The restart is counted when the death is seen; the replacement serves a moment later.
        async def replacement_logged() -> bool:
            return re.search(_RESTARTED.format(index=0), gw.log()) is not None

        await _until(replacement_logged, "the replacement serving process logged")
        match = re.search(_RESTARTED.format(index=0), gw.log())
        assert match is not None
        replacement = int(match.group(1))
        # Both serve again: new connections reach the survivor and the replacement.
        again = await _spread(gw.port, [survivor, replacement], calls, per_worker=1)
        scraped = await _scrape(gw.metrics_port)
        await _close(channel for channel, _ in opened + again)
    finally:
        await stop_process(gw.proc)
    assert {pid for _, pid in opened} == {victim, survivor}
    assert _restarts(scraped, "worker") == 1
    assert _restarts(scraped, "telemetry") == 0
    assert replacement not in gw.workers


async def test_sigterm_with_two_workers_exports_and_stores_every_call(tmp_path: Path) -> None:
    calls = Calls()
    with OpenAIStub() as upstream, HttpOtlpReceiver() as receiver:
        # A slow route: calls still in flight when the signal comes, in both processes, so
        # their records come into being only during the shutdown.
        upstream.by_model["slow"] = Reply(delay=1.0)
        config = tmp_path / "aigw.toml"
        config.write_text(
            '[routes.echo]\nprovider = "echo"\n'
            '[routes.slow]\nprovider = "openai"\nmodel = "slow"\n'
            f'base_url = "{upstream.base_url}"\n'
        )
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.traces_url}
        gw = await _start(tmp_path / "state", env, "--config", str(config))
        try:
            opened = await _spread(gw.port, gw.workers, calls, per_worker=3)
            # One more round: its records are at most 50 ms old at the signal.
            await asyncio.gather(*(calls.make(channel) for channel, _ in opened))
            in_flight = [asyncio.create_task(calls.make(c, "slow")) for c, _ in opened]

            async def all_upstream() -> bool:
                return len(upstream.requests) == len(opened)

            await _until(all_upstream, "every slow call at the upstream")
            gw.proc.send_signal(signal.SIGTERM)
            # Drained, not cut: each call in flight at the signal is answered.
            await asyncio.gather(*in_flight)
            async with asyncio.timeout(BOUND):
                assert await gw.proc.wait() == 0, gw.log()[-3000:]
            await _close(channel for channel, _ in opened)
        finally:
            await stop_process(gw.proc)
        _assert_exported_once(receiver, calls)
    assert {pid for _, pid in opened} == set(gw.workers)
    assert len(calls.answered) == 3 * len(opened)
    stored = _stored_in_file(tmp_path / "state")
    assert set(stored) == set(calls.answered)
