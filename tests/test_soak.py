"""A bounded soak: steady load while the OTLP export is switched every 0.5 s.

Zero failed requests, every span of every Completion delivered exactly once to some receiver,
and the gateway's threads, file descriptors and memory flat. The gateway runs as its own
process so /proc tells its resource use, and its trace store is the ground truth of what it
produced.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import signal
from pathlib import Path

from aigw.v1 import admin_pb2, otel_config_pb2

from gateway.telemetry.trace_store_sqlite import SqliteTraceStore
from tests.clients import open_client
from tests.conftest import chat
from tests.otlp_receivers import GrpcOtlpReceiver, HttpOtlpReceiver
from tests.processes import start_gateway_process, stop_process

SOAK_SECONDS = 30
SWITCH_EVERY = 0.5
CLIENTS = 4


def _resources(pid: int) -> tuple[int, int, int]:
    """(threads, open fds, RSS kB) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    threads = int(fields["Threads"])
    rss_kb = int(fields["VmRSS"].split()[0])
    return threads, len(os.listdir(f"/proc/{pid}/fd")), rss_kb


async def test_soak_switching_export_under_load(tmp_path: Path) -> None:
    with HttpOtlpReceiver() as http_a, HttpOtlpReceiver() as http_b, GrpcOtlpReceiver() as grpc_c:
        proto, json_ = otel_config_pb2.ENCODING_PROTO, otel_config_pb2.ENCODING_JSON
        on = otel_config_pb2.ExporterConfig
        targets = [
            on(enabled=True, endpoint=http_a.traces_url, encoding=proto),
            on(enabled=True, endpoint=http_b.traces_url, encoding=json_),
            otel_config_pb2.ExporterConfig(
                enabled=True, endpoint=grpc_c.endpoint, protocol=otel_config_pb2.PROTOCOL_GRPC
            ),
            otel_config_pb2.ExporterConfig(
                enabled=True, endpoint=http_a.traces_url, encoding=json_,
                compression=otel_config_pb2.COMPRESSION_GZIP,
            ),
        ]  # fmt: skip
        proc, port, _ = await start_gateway_process(state_dir=tmp_path)
        failures: list[str] = []
        completed = 0
        try:
            async with open_client(port) as client:
                admin, completion = client.admin, client.completion

                async def switch(section: otel_config_pb2.ExporterConfig) -> None:
                    await admin.SetOtelConfig(
                        admin_pb2.SetOtelConfigRequest(
                            config=otel_config_pb2.OtelConfig(traces=section)
                        ),
                        timeout=10,
                    )

                await switch(targets[0])
                loop = asyncio.get_running_loop()
                end = loop.time() + SOAK_SECONDS
                stop = asyncio.Event()

                async def client(n: int) -> None:
                    nonlocal completed
                    while not stop.is_set():
                        try:
                            reply = await completion.Complete(chat(f"client {n}"), timeout=10)
                            assert reply.content == f"client {n}"
                            completed += 1
                        except Exception as e:  # every failure is a finding
                            failures.append(repr(e))

                workers = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
                await asyncio.sleep(3)  # warm-up before the baseline reading
                before = _resources(proc.pid)
                for target in itertools.cycle(targets[1:] + targets[:1]):
                    if loop.time() >= end:
                        break
                    await switch(target)
                    await asyncio.sleep(SWITCH_EVERY)
                after = _resources(proc.pid)
                stop.set()
                await asyncio.gather(*workers)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await proc.wait() == 0
        finally:
            await stop_process(proc)

        received = collections.Counter(
            (t, s) for r in (http_a, http_b, grpc_c) for t, s, _ in r.spans()
        )
        violations = http_a.violations + http_b.violations

    assert not failures, failures[:5]
    assert completed > 200
    assert not violations
    with SqliteTraceStore.open(
        tmp_path / "traces.db", max_spans=10**7, max_age_seconds=1e9
    ) as store:
        produced = set()
        token = ""
        while True:
            page, token = store.list_traces(model="echo", page_size=1000, page_token=token)
            for summary in page:
                produced |= {(s.trace_id, s.span_id) for s in store.get_trace(summary.trace_id)}
            if not token:
                break
    assert len(produced) == 2 * completed
    duplicates = [k for k, n in received.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} spans arrived more than once"
    missing = produced - received.keys()
    assert not missing, f"{len(missing)} of {len(produced)} spans never arrived"
    print(f"soak: {completed} calls, {len(produced)} spans, resources {before} -> {after}")
    threads_before, fds_before, rss_before = before
    threads_after, fds_after, rss_after = after
    assert threads_after <= threads_before + 2, (before, after)
    assert fds_after <= fds_before + 8, (before, after)
    assert rss_after - rss_before < 40_000, (before, after)  # kB
