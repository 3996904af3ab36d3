"""The telemetry process: the control plane and the telemetry side, nothing on a request's path.

It owns the trace store, the OTLP exporters, the metrics (`/metrics` and the console on the
side-port), the OTEL config and the replica heartbeat, and serves two things on a unix socket
in a directory only this gateway's user can enter: the record intake (`intake.py`) and the
AdminService that serving processes forward to (`admin_forward.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from multiprocessing.connection import Connection

import grpc
from aigw.v1 import admin_pb2_grpc

from gateway.auth import ForwardedPrincipal
from gateway.config import GatewayConfig, parse_listen_address
from gateway.processes.child import prepare_child, report_failure
from gateway.processes.intake import CHANNEL_OPTIONS, Intake, socket_target
from gateway.server import FLUSH_SECONDS, ControlPlane

__all__ = ["telemetry_main"]


def telemetry_main(
    config: GatewayConfig,
    socket_path: str,
    conn: Connection,
    log_level: str,
    supervisor_pid: int,
    metrics_port: int | None,
    advertised: str,
    serving_processes: int,
) -> None:
    """Process entry point. `metrics_port`: the side-port's port of the first start (a
    restarted telemetry process answers where the dead one did)."""
    prepare_child(log_level, supervisor_pid)
    if metrics_port is not None:
        host = parse_listen_address(config.server.metrics_listen)[0]
        server = dataclasses.replace(config.server, metrics_listen=f"{host}:{metrics_port}")
        config = dataclasses.replace(config, server=server)
    try:
        asyncio.run(_run(config, socket_path, conn, advertised, serving_processes))
    except Exception as e:
        report_failure(conn, e)
        raise SystemExit(1) from None


async def _run(
    config: GatewayConfig,
    socket_path: str,
    conn: Connection,
    advertised: str,
    serving_processes: int,
) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    control = ControlPlane(config, os.environ)
    server: grpc.aio.Server | None = None
    try:
        await control.start()
        assert control.telemetry is not None
        assert control.admin is not None
        server = grpc.aio.server(interceptors=[ForwardedPrincipal()], options=CHANNEL_OPTIONS)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(control.admin, server)
        intake = Intake(control.telemetry)
        intake.add_to(server)
        control.telemetry.ingest.expect_followers(serving_processes)
        with contextlib.suppress(FileNotFoundError):  # left by a telemetry process killed
            os.unlink(socket_path)
        if server.add_insecure_port(socket_target(socket_path)) == 0:
            raise OSError(f"cannot listen on {socket_path}")
        await server.start()
        control.announce(advertised)
        conn.send(("ready", {"metrics_port": control.metrics_port}))
        await stop.wait()
        # A SIGTERM to the whole process group reaches the serving processes too: they are
        # draining now and will send their last records; leave only once they are gone.
        await intake.followers_gone(config.server.grace_period_seconds + FLUSH_SECONDS)
    finally:
        if server is not None:
            # Serving processes stopped first; what is still in flight gets a moment.
            await server.stop(1.0)
        await control.stop(time.monotonic() + FLUSH_SECONDS)
