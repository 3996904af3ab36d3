"""The HTTP side-port: Prometheus `/metrics` from the gateway's own registry.

prometheus-client's server runs in its own threads, so a scrape (which walks every metric)
never runs on the event loop that serves gRPC.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["MetricsServer"]


class MetricsServer:
    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server, self._thread = start_http_server(
            self._port, addr=self._host, registry=self._registry
        )

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_port

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
