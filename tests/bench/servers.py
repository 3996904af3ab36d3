"""The processes under test and around them, each started fresh for the run.

- `start_baseline`: `python -m tests.bench.baseline_server` (bare grpc.aio, fixed answer).
- `start_aigw`: `aigw serve` with its own config file and fresh state dir, ports picked by the
  OS (read back from its start-up log line), OTEL_* variables scrubbed so export starts off;
  with `store=`, fleet mode: a `[store]` section and the database URL and key in its env;
  `serve_args=` adds options (`--workers 2`). `serve_options`: what a tree's CLI accepts.
- `ServerProcess.stats`: CPU and memory summed over the server's process tree (`ProcStats`).
- `start_sink`: `python -m tests.bench.otlp_sink` (live, black-holed and refusing endpoints).
- `configure_export`: `aigw.v1.AdminService/SetOtelConfig`, as an operator would at runtime.
- `ServerProcess.check`: a few Complete calls with a Python gRPC client, each must be OK and
  carry the answer the echo route gives (h2load only sees HTTP 200s).
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2, completion_pb2_grpc, otel_config_pb2
from google.protobuf import duration_pb2

from tests.bench.measure import ProcStats
from tests.bench.payload import STREAM_ROUTE, UNARY_ROUTE, bench_request, echo_response

__all__ = [
    "ServerError",
    "ServerProcess",
    "SinkProcess",
    "StoreEnv",
    "configure_export",
    "serve_options",
    "start_aigw",
    "start_baseline",
    "start_sink",
]

REPO = Path(__file__).resolve().parents[2]
_START_TIMEOUT = 60.0
_AIGW_READY = re.compile(r"aigw serving gRPC on (\S+):(\d+), metrics on http://(\S+):(\d+)/metrics")


class ServerError(RuntimeError):
    """A process did not start, or answered something other than what the bench expects."""


# Never inherited from the shell that runs the bench: each server gets what its scenario says.
_SCRUBBED = ("AIGW_ADMIN_TOKEN", "AIGW_STATE_DIR", "AIGW_DATABASE_URL", "AIGW_CONFIG_KEY")


def _env(tree: Path = REPO) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k not in _SCRUBBED}
    path = [str(tree), str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in path if p))
    return env


def _wait_for(path: Path, proc: subprocess.Popen[bytes], parse: Callable[[str], object]) -> object:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        found = parse(text)
        if found is not None:
            return found
        if proc.poll() is not None:
            raise ServerError(f"exited {proc.returncode} before it was ready:\n{text[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise ServerError(f"not ready within {_START_TIMEOUT:.0f}s; see {path}")


@dataclass
class ServerProcess:
    """A server under test: its process, ports and a Python client channel for checks."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int | None
    log: Path
    command: list[str]
    _channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def is_aigw(self) -> bool:
        return self.metrics_port is not None

    def stats(self) -> ProcStats:
        """CPU and memory of the server's whole process tree: aigw serve is a supervisor whose
        children (telemetry and serving processes) do the work."""
        return ProcStats.read(self.pid)

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        return self._channel

    def check(self, calls: int = 3, *, stream: bool = False) -> None:
        """`calls` Complete calls (and one StreamComplete): gRPC OK and the expected answer."""
        stub = completion_pb2_grpc.CompletionStub(self.channel)
        expected = echo_response()
        expected.ClearField("id")
        for _ in range(calls):
            try:
                response = stub.Complete(bench_request(UNARY_ROUTE), timeout=10)
            except grpc.RpcError as e:
                raise ServerError(f"{self.name}: Complete failed: {e.code()} {e.details()}") from e
            got = completion_pb2.CompleteResponse()
            got.CopyFrom(response)
            got.ClearField("id")
            if got != expected or not response.id.startswith("echo-"):
                raise ServerError(f"{self.name}: unexpected Complete answer: {response}")
        if stream:
            try:
                chunks = list(stub.StreamComplete(bench_request(STREAM_ROUTE), timeout=10))
            except grpc.RpcError as e:
                raise ServerError(f"{self.name}: StreamComplete failed: {e.code()}") from e
            text = "".join(c.delta for c in chunks)
            if text != expected.content or chunks[-1].finish_reason != "stop":
                raise ServerError(f"{self.name}: unexpected stream: {chunks}")

    def stop(self, timeout: float = 20.0) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        terminate(self.proc, timeout)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_baseline(workdir: Path, stream_delay_ms: float) -> ServerProcess:
    log = workdir / "baseline.log"
    cmd = [sys.executable, "-m", "tests.bench.baseline_server", "--port", "0"]
    cmd += ["--stream-delay-ms", f"{stream_delay_ms:g}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)

    def ready(text: str) -> int | None:
        match = re.search(r"^LISTENING (\d+)$", text, re.MULTILINE)
        return int(match.group(1)) if match else None

    port = _wait_for(log, proc, ready)
    assert isinstance(port, int)
    return ServerProcess("baseline", proc, port, None, log, cmd)


AIGW_CONFIG = """\
# Written by tests/bench: the echo route the load calls, and a streaming one with a fixed
# time to first token. Everything else (telemetry, trace store) is at its defaults.
[server]
grace_period_seconds = 1

[routes.{unary}]
provider = "echo"
model = "echo-1"
latency_ms = 0
token_delay_ms = 0

[routes.{stream}]
provider = "echo"
model = "echo-1"
latency_ms = {delay:g}
token_delay_ms = 0
"""


# Fleet mode (`store=`): the variables' names, as README "Running a fleet" has them.
AIGW_STORE_CONFIG = """
[store]
database_url_env = "AIGW_DATABASE_URL"
encryption_key_env = "AIGW_CONFIG_KEY"
"""


@dataclass(frozen=True)
class StoreEnv:
    """Where a fleet-mode gateway keeps its state: a PostgreSQL URL and a Fernet key."""

    url: str
    key: str

    def env(self) -> dict[str, str]:
        return {"AIGW_DATABASE_URL": self.url, "AIGW_CONFIG_KEY": self.key}


def aigw_command() -> list[str]:
    script = Path(sys.executable).with_name("aigw")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


def start_aigw(
    name: str,
    workdir: Path,
    stream_delay_ms: float,
    *,
    tree: Path | None = None,
    store: StoreEnv | None = None,
    serve_args: Sequence[str] = (),
) -> ServerProcess:
    """`aigw serve` from this checkout, or with the gateway code of another `tree` (a copy of
    the repository with a change to measure: its `gateway/` and `admin/` come first on the
    path, the installed dependencies stay the same). With `store`, in fleet mode: OTEL config
    and trace store in that PostgreSQL database (heartbeat and the rest at their defaults).
    `serve_args` go after the others (`--workers 2`): only what the scenario asks for, since
    an older `tree` may not know an option (see `serve_options`)."""
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    config = home / "aigw.toml"
    text = AIGW_CONFIG.format(unary=UNARY_ROUTE, stream=STREAM_ROUTE, delay=stream_delay_ms)
    config.write_text(text + (AIGW_STORE_CONFIG if store is not None else ""))
    log = home / "aigw.log"
    cmd = [sys.executable, "-m", "gateway"] if tree is not None else aigw_command()
    cmd += ["serve", "--config", str(config)]
    cmd += ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]
    cmd += ["--state-dir", str(home / "state"), "--log-level", "INFO", *serve_args]
    env = _env(tree or REPO) | (store.env() if store is not None else {})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tree or REPO
        )

    def ready(text: str) -> tuple[int, int] | None:
        match = _AIGW_READY.search(text)
        return (int(match.group(2)), int(match.group(4))) if match else None

    ports = _wait_for(log, proc, ready)
    assert isinstance(ports, tuple)
    return ServerProcess(name, proc, ports[0], ports[1], log, cmd)


@functools.cache
def serve_options(tree: Path | None = None) -> frozenset[str]:
    """The long options `aigw serve --help` lists, run as `start_aigw` would run it with this
    `tree` (an alternative tree may be a commit from before an option existed)."""
    cmd = [sys.executable, "-m", "gateway"] if tree is not None else aigw_command()
    try:
        out = subprocess.run(
            [*cmd, "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=_env(tree or REPO),
            cwd=tree or REPO,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out))


# --- OTLP -----------------------------------------------------------------------------------


@dataclass
class SinkProcess:
    proc: subprocess.Popen[bytes]
    urls: dict[str, str]
    log: Path
    # What the receivers got, as the sink reported on exit ({} until stopped, or if it could not).
    stats: dict[str, int] = field(default_factory=dict)

    def stop(self) -> dict[str, int]:
        if self.proc.poll() is None:
            terminate(self.proc, 15)
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("STATS "):
                    self.stats = json.loads(line[6:])
        return self.stats


def start_sink(workdir: Path) -> SinkProcess:
    log = workdir / "otlp-sink.log"
    cmd = [sys.executable, "-m", "tests.bench.otlp_sink"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)

    def ready(text: str) -> dict[str, str] | None:
        for line in text.splitlines():
            if line.startswith("READY "):
                return json.loads(line[6:])
        return None

    urls = _wait_for(log, proc, ready)
    assert isinstance(urls, dict)
    return SinkProcess(proc, urls, log)


def configure_export(
    server: ServerProcess, traces_url: str, metrics_url: str, *, interval_s: int = 1
) -> admin_pb2.SetOtelConfigResponse:
    """Turn on OTLP/HTTP protobuf export of traces and metrics through the admin API."""
    http, proto = otel_config_pb2.PROTOCOL_HTTP, otel_config_pb2.ENCODING_PROTO
    config = otel_config_pb2.OtelConfig(
        traces=otel_config_pb2.ExporterConfig(
            enabled=True, protocol=http, endpoint=traces_url, encoding=proto
        ),
        metrics=otel_config_pb2.ExporterConfig(
            enabled=True,
            protocol=http,
            endpoint=metrics_url,
            encoding=proto,
            export_interval=duration_pb2.Duration(seconds=interval_s),
        ),
    )
    stub = admin_pb2_grpc.AdminServiceStub(server.channel)
    try:
        return stub.SetOtelConfig(admin_pb2.SetOtelConfigRequest(config=config), timeout=30)
    except grpc.RpcError as e:
        raise ServerError(f"{server.name}: SetOtelConfig failed: {e.code()} {e.details()}") from e
