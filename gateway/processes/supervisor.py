"""`aigw serve`: the supervisor of one telemetry process and N serving processes.

Start: reserve the gRPC port (a socket bound with SO_REUSEPORT and never listening, held for
the gateway's life, so every serving process — and a restarted one — binds the same port, as
grpcio's multiprocessing example does), start the telemetry process and wait until it serves,
then the serving processes. A start that fails anywhere stops the whole gateway with the
child's exit code and message (2 for a bad state file or store, 1 for a port in use …).

Run: a process that dies is restarted — the telemetry process on the side-port it had, a
serving process on the shared port — and counted (`aigw_process_restarts_total{process}`);
one that keeps dying right after its start is restarted with a backoff up to 5 s. While the
telemetry process is away, serving processes keep answering and hold their records (see
`BatchWorker`); admin calls fail with UNAVAILABLE.

Stop (SIGTERM or SIGINT): serving processes first (each drains its calls for the grace period
and delivers its records), then the telemetry process (it flushes the trace store and the
exporters). A `kill -9` of the supervisor takes every child with it (`child.py`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Final

import grpc

from gateway.config import GatewayConfig, parse_listen_address
from gateway.processes.intake import DELIVER, socket_target
from gateway.processes.serving_process import serving_main, source_name
from gateway.processes.telemetry_process import telemetry_main
from gateway.server import FLUSH_SECONDS, advertised_address, tls_files
from gateway.telemetry.call_records import encode_batch

__all__ = ["serve"]

_log = logging.getLogger(__name__)

_SPAWN = multiprocessing.get_context("spawn")  # no fork: gRPC's threads do not survive one
_READY_SECONDS: Final = 60.0
_QUICK_DEATH_SECONDS: Final = 10.0
_MAX_BACKOFF_SECONDS: Final = 5.0
TELEMETRY, WORKER = "telemetry", "worker"


class _StartFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Stopping(Exception):
    """SIGTERM or SIGINT arrived while waiting for a child."""


@dataclass
class _Child:
    kind: str
    index: int
    process: BaseProcess
    conn: Connection
    started: float = field(default_factory=time.monotonic)
    quick_deaths: int = 0

    @property
    def source(self) -> str:
        return source_name(self.index, self.process.pid or 0)

    def describe(self) -> str:
        name = "telemetry process" if self.kind == TELEMETRY else f"serving process {self.index}"
        return f"{name} (pid {self.process.pid})"


class Supervisor:
    def __init__(self, config: GatewayConfig, workers: int, log_level: str) -> None:
        self._config = config
        self._workers = workers
        self._log_level = log_level
        self._stop = False
        self._reserved: socket.socket | None = None
        self._port = 0
        self._metrics_port: int | None = None
        self._socket_dir = ""
        self._socket_path = ""
        self._telemetry: _Child | None = None
        self._serving: dict[int, _Child] = {}
        self._restarts: Counter[str] = Counter({TELEMETRY: 0, WORKER: 0})
        self._gone: list[str] = []
        self._report_due = False
        self._reporter: grpc.Channel | None = None

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            self._start()
            self._watch()
            return 0
        except _StartFailed as e:
            print(f"aigw: {e.message}", file=sys.stderr)
            return e.code
        except _Stopping:
            return 0
        finally:
            self._shutdown()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self._stop:
            _log.info(
                "shutting down: draining in-flight calls for up to %gs",
                self._config.server.grace_period_seconds,
            )
        self._stop = True

    # --- start ---------------------------------------------------------------------------

    def _start(self) -> None:
        server_cfg = self._config.server
        host, port = parse_listen_address(server_cfg.listen)
        try:
            # Before anything opens: certificate files that cannot be served stop it here.
            tls_files(self._config)
        except OSError as e:
            raise _StartFailed(1, f"cannot start: {e}") from None
        try:
            self._reserved = _reserve(host, port)
        except OSError as e:
            message = f"cannot start: cannot listen on {server_cfg.listen}: {e}"
            raise _StartFailed(1, message) from None
        self._port = self._reserved.getsockname()[1]
        # A short private path: unix socket paths are limited to ~107 bytes.
        self._socket_dir = tempfile.mkdtemp(prefix="aigw-")
        self._socket_path = os.path.join(self._socket_dir, "telemetry.sock")
        self._telemetry = self._spawn_telemetry()
        info = self._await_ready(self._telemetry)
        self._metrics_port = int(info["metrics_port"])
        for index in range(self._workers):
            self._serving[index] = self._spawn_serving(index)
        for child in self._serving.values():
            self._await_ready(child)
        self._reporter = grpc.insecure_channel(socket_target(self._socket_path))
        self._report_due = True  # the restart counters exist, at 0, from the start
        metrics_host = parse_listen_address(server_cfg.metrics_listen)[0]
        _log.info(
            "aigw serving gRPC on %s:%d, metrics on http://%s:%d/metrics, routes: %s; "
            "%d serving process(es), pids %s; telemetry process pid %s",
            host,
            self._port,
            metrics_host,
            self._metrics_port,
            ", ".join(sorted(self._config.routes)),
            self._workers,
            ",".join(str(c.process.pid) for c in self._serving.values()),
            self._telemetry.process.pid,
        )

    def _spawn_telemetry(self) -> _Child:
        host = parse_listen_address(self._config.server.listen)[0]
        return self._spawn(
            TELEMETRY,
            0,
            telemetry_main,
            self._config,
            self._socket_path,
            log_level=self._log_level,
            extra=(self._metrics_port, advertised_address(host, self._port), self._workers),
        )

    def _spawn_serving(self, index: int) -> _Child:
        return self._spawn(
            WORKER,
            index,
            serving_main,
            self._config,
            index,
            self._port,
            self._socket_path,
            log_level=self._log_level,
        )

    def _spawn(
        self,
        kind: str,
        index: int,
        target: Any,
        *args: Any,
        log_level: str,
        extra: tuple[Any, ...] = (),
    ) -> _Child:
        reader, writer = _SPAWN.Pipe(duplex=False)
        process = _SPAWN.Process(
            target=target,
            args=(*args, writer, log_level, os.getpid(), *extra),
            name=f"aigw-{kind}-{index}",
        )
        process.start()
        writer.close()
        return _Child(kind, index, process, reader)

    def _await_ready(self, child: _Child) -> dict[str, Any]:
        deadline = time.monotonic() + _READY_SECONDS
        while True:
            if self._stop:
                raise _Stopping
            ended = False
            if child.conn.poll(0.1):
                try:
                    message = child.conn.recv()
                except EOFError:  # it exited without a word (killed, crashed on import …)
                    message, ended = None, True
                    child.process.join(1.0)
                if message and message[0] == "ready":
                    return message[1]  # type: ignore[no-any-return]
                if message and message[0] == "failed":
                    raise _StartFailed(int(message[1]), str(message[2]))
            if ended or (not child.process.is_alive() and not child.conn.poll(0)):
                raise _StartFailed(
                    1,
                    f"cannot start: the {child.describe()} exited with {child.process.exitcode}",
                )
            if time.monotonic() > deadline:
                raise _StartFailed(
                    1, f"cannot start: the {child.describe()} was not ready in {_READY_SECONDS}s"
                )

    # --- run -----------------------------------------------------------------------------

    def _children(self) -> list[_Child]:
        return [c for c in (self._telemetry, *self._serving.values()) if c is not None]

    def _watch(self) -> None:
        while not self._stop:
            children = {c.process.sentinel: c for c in self._children()}
            ended = multiprocessing.connection.wait(list(children), timeout=0.5)
            for sentinel in ended:
                if self._stop:
                    break
                self._restart(children[sentinel])  # type: ignore[index]
            if self._report_due and not self._stop:
                self._report()

    def _restart(self, child: _Child) -> None:
        child.process.join(0)
        _log.warning("%s exited (%s); restarting it", child.describe(), _exit_reason(child.process))
        child.conn.close()
        self._restarts[child.kind] += 1
        if child.kind == WORKER:
            # Its calls are no longer in flight, and no trace query should wait for it.
            self._gone.append(child.source)
            self._report_due = True
            self._report()
        lived = time.monotonic() - child.started
        quick_deaths = child.quick_deaths + 1 if lived < _QUICK_DEATH_SECONDS else 0
        if quick_deaths:
            pause = min(0.25 * 2 ** (quick_deaths - 1), _MAX_BACKOFF_SECONDS)
            until = time.monotonic() + pause
            while not self._stop and time.monotonic() < until:
                time.sleep(0.05)
            if self._stop:
                return
        if child.kind == TELEMETRY:
            new = self._spawn_telemetry()
            self._telemetry = new
        else:
            new = self._spawn_serving(child.index)
            self._serving[child.index] = new
        new.quick_deaths = quick_deaths
        try:
            self._await_ready(new)
        except _StartFailed as e:
            # Left to the watch loop: it dies (or is killed here) and is restarted again.
            _log.error("restarting the %s failed: %s", child.describe(), e.message)
            if new.process.is_alive():
                new.process.kill()
            return
        _log.info("%s restarted as pid %s", child.describe().split(" (")[0], new.process.pid)
        self._report_due = True

    def _report(self) -> None:
        """Restart counts and dead serving processes, to the telemetry process's counters."""
        if self._reporter is None:
            return
        data = encode_batch(
            "", time.monotonic(), {}, {}, [], restarts=dict(self._restarts), gone=self._gone
        )
        try:
            self._reporter.unary_unary(DELIVER)(data, timeout=2)
        except grpc.RpcError:
            return  # the telemetry process is away: due again on the next turn
        self._gone = []
        self._report_due = False

    # --- stop ----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        grace = self._config.server.grace_period_seconds
        serving = [c for c in self._serving.values() if c.process.is_alive()]
        for child in serving:
            _terminate(child.process)
        deadline = time.monotonic() + grace + FLUSH_SECONDS + 2.0
        for child in serving:
            _join_or_kill(child.process, deadline)
        if self._telemetry is not None and self._telemetry.process.is_alive():
            _terminate(self._telemetry.process)
            _join_or_kill(self._telemetry.process, time.monotonic() + FLUSH_SECONDS + 5.0)
        if self._reporter is not None:
            self._reporter.close()
        if self._reserved is not None:
            self._reserved.close()
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        _log.info("aigw stopped")


def _reserve(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    except OSError:
        sock.close()
        raise
    return sock


def _terminate(process: BaseProcess) -> None:
    with contextlib.suppress(OSError, ValueError):  # already gone
        process.terminate()


def _join_or_kill(process: BaseProcess, deadline: float) -> None:
    process.join(max(deadline - time.monotonic(), 0.0))
    if process.is_alive():
        _log.warning("%s did not stop in time; killing it", process.name)
        process.kill()
        process.join(5.0)


def _exit_reason(process: BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def serve(config: GatewayConfig, workers: int, log_level: str) -> int:
    """Run until SIGTERM or SIGINT; answer the process exit code."""
    return Supervisor(config, workers, log_level).run()
