"""A serving process: the gRPC listener, on a port it shares with the others (SO_REUSEPORT).

It answers Completion itself and records each call as compact records, delivered in batches
to the telemetry process (`intake.py`); AdminService calls are forwarded there
(`admin_forward.py`). On SIGTERM it stops taking calls, drains the in-flight ones for the
grace period, then delivers every record it still holds before it exits.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from multiprocessing.connection import Connection

from gateway.config import GatewayConfig
from gateway.processes.admin_forward import AdminForwarder
from gateway.processes.child import prepare_child, report_failure
from gateway.processes.intake import DeliveryRequests, RecordsToTelemetry
from gateway.server import FLUSH_SECONDS, ServingPlane, server_certificates
from gateway.telemetry.batch_worker import BatchWorker
from gateway.telemetry.recorder import CallRecorder

__all__ = ["serving_main"]


def serving_main(
    config: GatewayConfig,
    index: int,
    port: int,
    socket_path: str,
    conn: Connection,
    log_level: str,
    supervisor_pid: int,
) -> None:
    """Process entry point: serve on `port` (reserved by the supervisor) until SIGTERM."""
    prepare_child(log_level, supervisor_pid)
    try:
        asyncio.run(_run(config, index, port, socket_path, conn))
    except Exception as e:
        report_failure(conn, e)
        raise SystemExit(1) from None


def source_name(index: int, pid: int) -> str:
    """How the telemetry process tells serving processes apart (a restart is a new source)."""
    return f"worker-{index}-{pid}"


async def _run(
    config: GatewayConfig, index: int, port: int, socket_path: str, conn: Connection
) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    source = source_name(index, os.getpid())
    remote = RecordsToTelemetry(
        socket_path,
        source,
        active=lambda: recorder.metrics.active,
        dropped=lambda: records.dropped,
        cut_at=lambda: records.cut_at,
    )
    records: BatchWorker[tuple[object, ...]] = BatchWorker(f"aigw-records-{index}", remote.deliver)
    requests = DeliveryRequests(socket_path, source, records)
    recorder = CallRecorder(config.telemetry, records.put, records.touch)
    forwarder = AdminForwarder(socket_path)
    certificates = server_certificates(config)  # a failure is reported by serving_main
    serving = ServingPlane(config, os.environ, recorder, forwarder.add_to, certificates)
    records.start()
    requests.start()
    try:
        await serving.start(reuse_port=True, port=port)
        conn.send(("ready", {"port": serving.port}))
        await stop.wait()
    finally:
        await serving.stop(config.server.grace_period_seconds)
        # Records first, then stop following: the telemetry process waits for its
        # followers to leave before it flushes (a SIGTERM to the whole process group).
        await asyncio.to_thread(records.shutdown, time.monotonic() + FLUSH_SECONDS)
        await requests.shutdown()
        await forwarder.close()
        remote.close()
