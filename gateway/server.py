"""Gateway bootstrap: build the parts, serve, and shut down in order.

Start-up builds downstream first (telemetry, router) so the first request finds everything in
place. Shutdown goes upstream first and drains each stage: health NOT_SERVING (load balancers
stop sending), `server.stop(grace)` (in-flight calls and streams finish), providers closed, span
and metric pipelines flushed under one deadline, trace store closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2, completion_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from admin.config_manager import OtelConfigManager
from admin.control_views import health_document
from admin.replicas import Identity, Replicas, StatusSource
from admin.servicer import AdminServicer
from gateway.auth import AuthInterceptor, parse_api_keys
from gateway.backends import OTEL_CONFIG_FILE, open_backends
from gateway.completion import CompletionServicer
from gateway.config import GatewayConfig, parse_listen_address
from gateway.console import Console
from gateway.metrics_http import SidePort
from gateway.redaction import REDACTOR
from gateway.router import Router
from gateway.state_dir import private_dir
from gateway.telemetry.interceptor import TelemetryInterceptor
from gateway.telemetry.pipeline import Telemetry
from gateway.telemetry.resource import build_resource
from gateway.tls import (
    ServerCertificates,
    TlsFileError,
    TlsFiles,
    check_files,
    is_loopback_host,
)

__all__ = ["OTEL_CONFIG_FILE", "Gateway", "serve"]

_log = logging.getLogger(__name__)

SERVICE_NAMES = (
    completion_pb2.DESCRIPTOR.services_by_name["Completion"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
# Time left after the grace period to flush telemetry before the process gives up on it.
_FLUSH_SECONDS = 5.0


class Gateway:
    """One gateway instance: gRPC server, metrics side-port, telemetry. Start once, stop once."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        # OTEL_* seeding and the admin token; tests pass their own instead of os.environ.
        self._env = os.environ if env is None else env
        self.otel: OtelConfigManager | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._metrics_server: SidePort | None = None
        self._router: Router | None = None
        self.telemetry: Telemetry | None = None
        self.replicas: Replicas | None = None
        self.instance_id = ""
        self.port = 0
        self.metrics_port = 0
        self.certificates: ServerCertificates | None = None
        self._stopped = False

    @property
    def state_dir(self) -> Path:
        return self.config.server.state_dir

    async def start(self) -> None:
        server_cfg = self.config.server
        host, port = parse_listen_address(server_cfg.listen)
        metrics_host, metrics_port = parse_listen_address(server_cfg.metrics_listen)
        # Before anything opens: certificate files that cannot be served stop the start here.
        self.certificates = _certificates(self.config)
        private_dir(self.state_dir)

        resource = build_resource()
        self.instance_id = str(resource.attributes["service.instance.id"])
        backends = await asyncio.to_thread(open_backends, self.config, self._env, self.instance_id)
        self.telemetry = telemetry = Telemetry(
            self.config.telemetry, backends.trace_store, resource
        )
        self.otel = otel = OtelConfigManager(telemetry, backends.config_store)
        await otel.start(self._env)
        self.replicas = replicas = backends.replicas(
            StatusSource(
                applied_version=lambda: otel.settings.version,
                health=lambda: health_document(telemetry.health()),
            ),
            self.config,
        )
        self._router = Router(self.config.routes)
        admin_token = self._env.get("AIGW_ADMIN_TOKEN", "")
        api_keys = parse_api_keys(self._env.get("AIGW_API_KEYS", ""))
        # Nothing of ours logs them; a library echoing a rejected header might.
        REDACTOR.set_secrets(f"credentials-{id(self)}", [admin_token, *api_keys])
        telemetry.start()
        recorder = telemetry.recorder
        interceptor = TelemetryInterceptor(recorder.spans, recorder.metrics, host, port)
        limit = server_cfg.max_message_bytes
        self._server = server = grpc.aio.server(
            # Telemetry outermost: refused admin calls are traced and counted too.
            interceptors=[
                interceptor,
                AuthInterceptor(admin_token, api_keys),
            ],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
        )
        completion_pb2_grpc.add_CompletionServicer_to_server(
            CompletionServicer(self._router, recorder.genai), server
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(telemetry, otel, replicas), server
        )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        self.port = self._add_port(server, host, port)
        if self.port == 0:
            raise OSError(f"cannot listen on {server_cfg.listen}")
        interceptor.set_server_port(self.port)

        console = Console(telemetry, otel, replicas, telemetry.registry, admin_token)
        self._metrics_server = SidePort(
            telemetry.registry,
            metrics_host,
            metrics_port,
            max_connections=server_cfg.side_port_max_connections,
            idle_timeout=server_cfg.side_port_idle_timeout_seconds,
            setup=console.install,
        )
        await self._metrics_server.start()
        self.metrics_port = self._metrics_server.port
        await server.start()
        replicas.start(Identity(instance_id=self.instance_id, address=_advertised(host, self.port)))
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def _add_port(self, server: grpc.aio.Server, host: str, port: int) -> int:
        """TLS (re-read on change, mTLS with a client CA) when configured, else plaintext."""
        cfg = self.config.server
        address = f"{_bracket(host)}:{port}"
        if self.certificates is not None:
            return server.add_secure_port(address, self.certificates.credentials())
        if not is_loopback_host(host):
            _log.warning(
                "gRPC listener %s is not loopback and has no TLS: the admin token and client "
                "API keys travel in clear text; set [server] tls_cert_file and tls_key_file",
                cfg.listen,
            )
        return server.add_insecure_port(address)

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop; safe to call twice and after a failed start."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.server.grace_period_seconds if grace is None else grace
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self._router is not None:
            await self._router.aclose()
        if self._metrics_server is not None:
            await self._metrics_server.stop()
        deadline = time.monotonic() + _FLUSH_SECONDS
        if self.replicas is not None:
            await asyncio.to_thread(self.replicas.shutdown, deadline)
        if self.otel is not None:
            await self.otel.shutdown(deadline)
        if self.telemetry is not None:
            await asyncio.to_thread(self.telemetry.shutdown, deadline)
        REDACTOR.set_secrets(f"credentials-{id(self)}", [])

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


def _certificates(config: GatewayConfig) -> ServerCertificates | None:
    cfg = config.server
    if cfg.tls_cert_file is None and cfg.tls_key_file is None and cfg.client_ca_file is None:
        return None
    problems = check_files(cfg.tls_cert_file, cfg.tls_key_file, cfg.client_ca_file)
    if problems or cfg.tls_cert_file is None or cfg.tls_key_file is None:
        raise TlsFileError(problems)
    return ServerCertificates(TlsFiles(cfg.tls_cert_file, cfg.tls_key_file, cfg.client_ca_file))


def _advertised(host: str, port: int) -> str:
    """The address other replicas and operators can reach this one at."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"{_bracket(host)}:{port}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(config: GatewayConfig) -> int:
    """Run until SIGTERM or SIGINT; answer the process exit code."""
    gateway = Gateway(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.start()
        _log.info(
            "aigw serving gRPC on %s:%d, metrics on http://%s:%d/metrics, routes: %s",
            parse_listen_address(config.server.listen)[0],
            gateway.port,
            parse_listen_address(config.server.metrics_listen)[0],
            gateway.metrics_port,
            ", ".join(sorted(config.routes)),
        )
        await stop.wait()
        _log.info(
            "shutting down: draining in-flight calls for up to %gs",
            config.server.grace_period_seconds,
        )
    finally:
        with contextlib.suppress(Exception):
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        await gateway.stop()
    _log.info("aigw stopped")
    return 0
