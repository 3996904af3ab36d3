"""The HTTP side-port: Prometheus `/metrics` and the operator console, served by aiohttp.

It runs on the gateway's own event loop, so it costs no thread per connection; whatever blocks
(a scrape walks every metric, a trace store query, a test export) runs in a worker thread. The
port defends itself, so neither an idle flood nor a slow sender can starve Prometheus:

* at most `max_connections` connections: a new one past the bound closes the connection that
  has been idle longest (no request in progress), so a scrape always gets in; when every
  connection is busy with a request, the newcomer is closed instead;
* a connection that has not sent a complete request head `idle_timeout` seconds after it
  opened, or after its last response, is closed (idle keep-alives and slowloris senders alike);
  a request body must arrive within the same time (`read_body`).

`/metrics` is prometheus-client's own WSGI app, called in a worker thread: the exposition, its
content negotiation (OpenMetrics, gzip) and content types are exactly what they always were.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry, make_wsgi_app

__all__ = ["DEFAULT_IDLE_TIMEOUT", "DEFAULT_MAX_CONNECTIONS", "SidePort"]

_log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_IDLE_TIMEOUT = 30.0
# A console form is a few KiB; anything much larger is not one.
_MAX_BODY = 256 * 1024

# Adds routes to the app; gets the side-port for `read_body`.
Setup = Callable[[web.Application, "SidePort"], None]


class _Refused(asyncio.Protocol):
    """Past the bound with every connection busy: close the newcomer at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's handler for one connection, counted from the moment it is accepted (aiohttp
    itself learns of a connection only once the loop gets to its `connection_made`, after a
    whole batch of accepts)."""

    def __init__(self, port: SidePort, handler: RequestHandler) -> None:
        self.port = port
        self.handler = handler
        self.evicted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.evicted:
            transport.close()
            return
        self.handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.port._open.pop(self, None)
        if not self.evicted or self.handler.transport is not None:
            self.handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def evict(self) -> None:
        self.evicted = True
        self.port._open.pop(self, None)
        if self.handler.transport is not None:
            self.handler.force_close()


class SidePort:
    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        setup: Setup | None = None,
    ) -> None:
        self._metrics = make_wsgi_app(registry)
        self._host = host
        self._port = port
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._setup = setup
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._bound_port = 0
        # Open connections, oldest first, and those with a request being handled right now
        # (never evicted as idle).
        self._open: dict[_Counted, None] = {}
        self._busy: set[Any] = set()

    @property
    def port(self) -> int:
        assert self._listener is not None, "not started"
        return self._bound_port

    def connection_count(self) -> int:
        """Open connections (evicted ones not counted), for tests."""
        return len(self._open)

    async def start(self) -> None:
        app = web.Application(middlewares=[self._track_busy], client_max_size=_MAX_BODY)
        app.router.add_route("*", "/metrics", self._serve_metrics)
        if self._setup is not None:
            self._setup(app, self)
        # keepalive_timeout runs from the connection's start and from each response: a
        # connection without a complete request head by then is closed (aiohttp >= 3.12).
        self._runner = web.AppRunner(
            app, access_log=None, keepalive_timeout=self.idle_timeout, shutdown_timeout=1.0
        )
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.setblocking(False)
            self._bound_port = sock.getsockname()[1]
            loop = asyncio.get_running_loop()
            self._listener = await loop.create_server(self._connection, sock=sock, backlog=1024)
        except BaseException:
            sock.close()
            await self._runner.cleanup()
            raise

    def _connection(self) -> asyncio.BaseProtocol:
        assert self._runner is not None
        assert self._runner.server is not None
        if len(self._open) >= self.max_connections:
            idle = next((c for c in self._open if c.handler not in self._busy), None)
            if idle is None:
                return _Refused()
            idle.evict()
        counted = _Counted(self, self._runner.server())
        self._open[counted] = None
        return counted

    @web.middleware
    async def _track_busy(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        protocol: RequestHandler | None = request.protocol
        self._busy.add(protocol)
        try:
            return await handler(request)
        finally:
            self._busy.discard(protocol)

    async def read_body(self, request: web.Request) -> Any:
        """The request's form fields, or 408 when the body does not arrive in time."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                return await request.post()
        except TimeoutError:
            raise web.HTTPRequestTimeout() from None

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        environ = {
            "REQUEST_METHOD": request.method,
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query_string,
            "wsgi.input": io.BytesIO(),
        }
        for name, key in (("Accept", "HTTP_ACCEPT"), ("Accept-Encoding", "HTTP_ACCEPT_ENCODING")):
            if name in request.headers:
                environ[key] = request.headers[name]
        return await asyncio.to_thread(self._call_metrics, environ)

    def _call_metrics(self, environ: dict[str, Any]) -> web.Response:
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            answer["status"], answer["headers"] = status, headers

        body = b"".join(self._metrics(environ, start_response))
        code, _, reason = answer["status"].partition(" ")
        response = web.Response(status=int(code), reason=reason, body=body)
        for name, value in answer["headers"]:
            response.headers[name] = value
        return response

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
