"""The side-port defends itself: bounded connections, idle and half-sent ones closed in time,
and a scrape answered through a flood of idle connections and slow senders."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import urllib.request

from tests.conftest import GatewayFactory


def _open_idle(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(s)
    return socks


def _closed_by_server(s: socket.socket, within: float) -> bool:
    """True when the server closed `s` (EOF or reset) within `within` seconds."""
    s.settimeout(within)
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _scrape(port: int) -> tuple[int, bytes, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as r:
        return r.status, r.read(), r.headers["Content-Type"]


class _Trickler(threading.Thread):
    """A slowloris: a request head sent one byte at a time, never finished."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.closed = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
        try:
            for byte in head:
                if self.stop.is_set():
                    return
                self.sock.sendall(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            self.closed.set()


async def test_idle_flood_and_slow_senders_do_not_starve_a_scrape(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(side_port_max_connections=64, side_port_idle_timeout_seconds=1.5)
    port = gw.metrics_port
    idle = await asyncio.to_thread(_open_idle, port, 300)
    half = await asyncio.to_thread(_open_idle, port, 5)
    for s in half:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # head never finished
    tricklers = [_Trickler(port) for _ in range(3)]
    for t in tricklers:
        t.start()
    try:
        status, body, content_type = await asyncio.to_thread(_scrape, port)
        assert status == 200
        assert b"# TYPE" in body
        assert content_type.startswith("text/plain")
        side_port = gw.control.side_port
        assert side_port is not None
        assert side_port.connection_count() <= 64
        # Every idle, half-sent and trickling connection still open is closed after the timeout.
        survivors = idle[-50:] + half
        results = await asyncio.gather(
            *(asyncio.to_thread(_closed_by_server, s, 15) for s in survivors)
        )
        assert all(results)
        for t in tricklers:
            await asyncio.to_thread(t.closed.wait, 15)
            assert t.closed.is_set(), "a slow sender outlived the idle timeout"
        # And the port still serves.
        status, _, _ = await asyncio.to_thread(_scrape, port)
        assert status == 200
    finally:
        for t in tricklers:
            t.stop.set()
            t.sock.close()
        for s in idle + half:
            with contextlib.suppress(OSError):
                s.close()


async def test_two_thousand_idle_connections_then_a_scrape(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()  # the default bound (1000) and idle timeout
    port = gw.metrics_port
    idle = await asyncio.to_thread(_open_idle, port, 2000)
    try:
        started = time.monotonic()
        status, body, _ = await asyncio.to_thread(_scrape, port)
        assert status == 200
        assert b"rpc_server_call_duration_seconds" in body or b"# TYPE" in body
        assert time.monotonic() - started < 10  # a generous bound: it answered, not starved
        side_port = gw.control.side_port
        assert side_port is not None
        assert side_port.connection_count() <= side_port.max_connections
    finally:
        for s in idle:
            s.close()


async def test_metrics_is_unchanged_and_other_methods_answered_as_before(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    port = gw.metrics_port

    def openmetrics() -> tuple[str, bytes]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.headers["Content-Type"], r.read()

    content_type, body = await asyncio.to_thread(openmetrics)
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")

    def post() -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x", method="POST")
        try:
            urllib.request.urlopen(req, timeout=10)
        except urllib.error.HTTPError as e:
            return e.code
        return 200

    assert await asyncio.to_thread(post) == 405
