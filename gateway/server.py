"""Gateway bootstrap: build the parts, serve, and shut down in order.

Start-up builds downstream first (telemetry, router) so the first request finds everything in
place. Shutdown goes upstream first and drains each stage: health NOT_SERVING (load balancers
stop sending), `server.stop(grace)` (in-flight calls and streams finish), providers closed, span
and metric pipelines flushed under one deadline, trace store closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
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
from gateway.telemetry.recorder import CallRecorder
from gateway.telemetry.resource import build_resource
from gateway.tls import (
    ServerCertificates,
    TlsFileError,
    TlsFiles,
    check_files,
    is_loopback_host,
)

__all__ = [
    "FLUSH_SECONDS",
    "OTEL_CONFIG_FILE",
    "ControlPlane",
    "Gateway",
    "ServingPlane",
    "advertised_address",
    "server_certificates",
    "tls_files",
]

_log = logging.getLogger(__name__)

SERVICE_NAMES = (
    completion_pb2.DESCRIPTOR.services_by_name["Completion"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
# Time left after the grace period to flush telemetry before the process gives up on it.
FLUSH_SECONDS = 5.0


class ControlPlane:
    """The telemetry side and the control plane over it, in the process that owns them: trace
    store, exporters, metrics, OTEL config, replicas, the side-port (`/metrics`, console) and
    the AdminService servicer."""

    def __init__(self, config: GatewayConfig, env: Mapping[str, str]) -> None:
        self.config = config
        self._env = env
        self.telemetry: Telemetry | None = None
        self.otel: OtelConfigManager | None = None
        self.replicas: Replicas | None = None
        self.admin: AdminServicer | None = None
        self.side_port: SidePort | None = None
        self.instance_id = ""
        self.metrics_port = 0
        self._stopped = False

    async def start(self) -> None:
        private_dir(self.config.server.state_dir)
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
        self.admin = AdminServicer(telemetry, otel, replicas)
        admin_token = self._env.get("AIGW_ADMIN_TOKEN", "")
        console = Console(telemetry, otel, replicas, telemetry.registry, admin_token)
        server_cfg = self.config.server
        metrics_host, metrics_port = parse_listen_address(server_cfg.metrics_listen)
        self.side_port = SidePort(
            telemetry.registry,
            metrics_host,
            metrics_port,
            max_connections=server_cfg.side_port_max_connections,
            idle_timeout=server_cfg.side_port_idle_timeout_seconds,
            setup=console.install,
        )
        await self.side_port.start()
        self.metrics_port = self.side_port.port

    def announce(self, address: str) -> None:
        """Serving at `address`: join the fleet's replica list."""
        assert self.replicas is not None
        self.replicas.start(Identity(instance_id=self.instance_id, address=address))

    async def stop(self, deadline: float) -> None:
        """Flush and close everything by `deadline` (monotonic); safe twice, and after a
        failed start."""
        if self._stopped:
            return
        self._stopped = True
        if self.side_port is not None:
            await self.side_port.stop()
        if self.replicas is not None:
            await asyncio.to_thread(self.replicas.shutdown, deadline)
        if self.otel is not None:
            await self.otel.shutdown(deadline)
        if self.telemetry is not None:
            await asyncio.to_thread(self.telemetry.shutdown, deadline)


class ServingPlane:
    """The gRPC listener and what answers on it: Completion, AdminService (served here or
    forwarded, as `add_admin` decides), health, reflection; the telemetry interceptor records
    into `recorder`."""

    def __init__(
        self,
        config: GatewayConfig,
        env: Mapping[str, str],
        recorder: CallRecorder,
        add_admin: Callable[[grpc.aio.Server], None],
        certificates: ServerCertificates | None,
    ) -> None:
        """`certificates`: loaded by the caller, before whatever else it opens first."""
        self.config = config
        self._env = env
        self._recorder = recorder
        self._add_admin = add_admin
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._router: Router | None = None
        self.certificates = certificates
        self.port = 0
        self._stopped = False

    async def start(self, *, reuse_port: bool = False, port: int | None = None) -> int:
        """Listen (on `port` when given: a port the supervisor reserved) and serve."""
        server_cfg = self.config.server
        host, config_port = parse_listen_address(server_cfg.listen)
        port = config_port if port is None else port
        self._router = Router(self.config.routes)
        admin_token = self._env.get("AIGW_ADMIN_TOKEN", "")
        api_keys = parse_api_keys(self._env.get("AIGW_API_KEYS", ""))
        # Nothing of ours logs them; a library echoing a rejected header might.
        REDACTOR.set_secrets(f"credentials-{id(self)}", [admin_token, *api_keys])
        recorder = self._recorder
        interceptor = TelemetryInterceptor(recorder.spans, recorder.metrics, host, port)
        limit = server_cfg.max_message_bytes
        self._server = server = grpc.aio.server(
            # Telemetry outermost: refused admin calls are traced and counted too.
            interceptors=[interceptor, AuthInterceptor(admin_token, api_keys)],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # N serving processes share one port; each must ask for it.
                ("grpc.so_reuseport", 1 if reuse_port else 0),
            ],
        )
        completion_pb2_grpc.add_CompletionServicer_to_server(
            CompletionServicer(self._router, recorder.genai), server
        )
        self._add_admin(server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        self.port = self._add_port(server, host, port)
        if self.port == 0:
            raise OSError(f"cannot listen on {server_cfg.listen}")
        interceptor.set_server_port(self.port)
        await server.start()
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

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

    async def stop(self, grace: float) -> None:
        """Health NOT_SERVING, drain in-flight calls for `grace` s, close providers; safe twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self._router is not None:
            await self._router.aclose()
        REDACTOR.set_secrets(f"credentials-{id(self)}", [])

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


class Gateway:
    """One gateway in one process: serving, telemetry and control plane together (the tests',
    and each process's building blocks). Start once, stop once."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        # OTEL_* seeding and the admin token; tests pass their own instead of os.environ.
        self._env = os.environ if env is None else env
        self.control = ControlPlane(config, self._env)
        self.serving: ServingPlane | None = None
        self._stopped = False

    @property
    def state_dir(self) -> Path:
        return self.config.server.state_dir

    @property
    def telemetry(self) -> Telemetry | None:
        return self.control.telemetry

    @property
    def otel(self) -> OtelConfigManager | None:
        return self.control.otel

    @property
    def replicas(self) -> Replicas | None:
        return self.control.replicas

    @property
    def instance_id(self) -> str:
        return self.control.instance_id

    @property
    def metrics_port(self) -> int:
        return self.control.metrics_port

    @property
    def port(self) -> int:
        return 0 if self.serving is None else self.serving.port

    @property
    def certificates(self) -> ServerCertificates | None:
        return None if self.serving is None else self.serving.certificates

    async def start(self) -> None:
        # Before anything opens: certificate files that cannot be served stop the start here.
        certificates = server_certificates(self.config)
        await self.control.start()
        control = self.control
        assert control.telemetry is not None
        assert control.admin is not None
        # This process serves too: its call records go to its own telemetry side.
        control.telemetry.start()
        admin = control.admin
        self.serving = ServingPlane(
            self.config,
            self._env,
            control.telemetry.recorder,
            lambda server: admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server),
            certificates,
        )
        port = await self.serving.start()
        host = parse_listen_address(self.config.server.listen)[0]
        control.announce(advertised_address(host, port))

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop; safe to call twice and after a failed start."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.server.grace_period_seconds if grace is None else grace
        if self.serving is not None:
            await self.serving.stop(grace)
        await self.control.stop(time.monotonic() + FLUSH_SECONDS)

    async def wait(self) -> None:
        assert self.serving is not None
        await self.serving.wait()


def tls_files(config: GatewayConfig) -> TlsFiles | None:
    """The listener's certificate files, checked (TlsFileError lists every problem); None for
    plaintext. Reads them without serving them: a supervisor checks before anything starts."""
    cfg = config.server
    if cfg.tls_cert_file is None and cfg.tls_key_file is None and cfg.client_ca_file is None:
        return None
    problems = check_files(cfg.tls_cert_file, cfg.tls_key_file, cfg.client_ca_file)
    if problems or cfg.tls_cert_file is None or cfg.tls_key_file is None:
        raise TlsFileError(problems)
    return TlsFiles(cfg.tls_cert_file, cfg.tls_key_file, cfg.client_ca_file)


def server_certificates(config: GatewayConfig) -> ServerCertificates | None:
    files = tls_files(config)
    return None if files is None else ServerCertificates(files)


def advertised_address(host: str, port: int) -> str:
    """The address other replicas and operators can reach this one at."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"{_bracket(host)}:{port}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
