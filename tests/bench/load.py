"""Load generators: h2load for closed-loop runs, a small asyncio gRPC client for the rest.

Closed loop (fixed concurrency): `h2load -D <ms> -c 1 -m <C>` on one HTTP/2 connection, the way
a gRPC channel multiplexes calls, posting the pre-encoded length-prefixed request (`-d`) with
`content-type: application/grpc` and `te: trailers`. h2load counts HTTP 200s only, so gRPC
statuses are checked separately (Python calls before every run, and aigw's own
`rpc_server_call_duration_seconds_count` by status around it). Latencies come from h2load's
`--log-file` (one line per request), not its mean/sd summary.

Fixed rate: the asyncio client below, not h2load. h2load's `--rps` timer ticks at most every
10 ms (`max(0.01, 1/rps)` in h2load.cc), so 300 req/s arrive as bursts of 3, and after any stall
libev clamps every client's timer to "now", so staggered clients fall into lock-step. The
client schedules call *i* at `start + i/rate` on the monotonic clock (open loop: a slow answer
never delays the next call) and measures each call from when it was actually sent.

Without h2load (`make test` does not install it) the closed-loop runs use the same client with
C concurrent workers on one channel; it is itself CPU-bound on a small machine, so its numbers
are for the smoke test, not for comparison with h2load's.

The Python client runs as its own process (`python -m tests.bench.load MODE …`, JSON on stdout)
so that it never shares a GIL with the harness's scraper thread.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["H2LOAD_HEADERS", "LoadError", "LoadResult", "Loader"]

COMPLETE_PATH = "/aigw.v1.Completion/Complete"
H2LOAD_HEADERS = ("content-type: application/grpc", "te: trailers")
_CALL_TIMEOUT = 10.0


class LoadError(RuntimeError):
    """The load generator failed or the server answered errors."""


@dataclass
class LoadResult:
    """One measured run as the client saw it. Latencies in microseconds, sorted."""

    tool: str
    requests: int
    errors: dict[str, int]
    elapsed: float
    latencies_us: list[int]
    command: str
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0


# --- h2load ---------------------------------------------------------------------------------

_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def h2load_command(
    port: int, concurrency: int, duration: float, body: Path, log: Path | None
) -> list[str]:
    cmd = ["h2load", "-D", f"{round(duration * 1000)}ms", "-c", "1", "-m", str(concurrency)]
    cmd += ["-d", str(body)]
    for header in H2LOAD_HEADERS:
        cmd += ["-H", header]
    if log is not None:
        cmd.append(f"--log-file={log}")
    cmd.append(f"http://127.0.0.1:{port}{COMPLETE_PATH}")
    return cmd


def _display(cmd: Sequence[str]) -> str:
    return " ".join(f"'{part}'" if " " in part else part for part in cmd)


def parse_h2load(stdout: str) -> tuple[float, dict[str, int]]:
    """(elapsed seconds, counters) from h2load's summary."""
    finished = _FINISHED.search(stdout)
    requests = _REQUESTS.search(stdout)
    status = _STATUS.search(stdout)
    if finished is None or requests is None or status is None:
        raise LoadError(f"cannot parse h2load output:\n{stdout[-2000:]}")
    elapsed = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    names = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    counters = dict(zip(names, map(int, requests.groups()), strict=True))
    counters.update(zip(("2xx", "3xx", "4xx", "5xx"), map(int, status.groups()), strict=True))
    return elapsed, counters


def _read_h2load_log(log: Path) -> list[int]:
    latencies: list[int] = []
    with open(log, encoding="ascii") as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "200":
                latencies.append(int(parts[2]))
    latencies.sort()
    return latencies


# --- the loader -----------------------------------------------------------------------------


class Loader:
    """Runs loads against 127.0.0.1:PORT. `tool`: "h2load" or "python" (closed-loop runs)."""

    def __init__(self, workdir: Path, body: Path, *, tool: str = "auto") -> None:
        if tool == "auto":
            tool = "h2load" if shutil.which("h2load") else "python"
        if tool == "h2load" and not shutil.which("h2load"):
            raise LoadError("h2load not found (Debian: apt-get install nghttp2-client)")
        self.tool = tool
        self._workdir = workdir
        self._body = body
        self._runs = 0

    def closed(self, port: int, concurrency: int, duration: float) -> LoadResult:
        """Fixed concurrency for `duration` seconds."""
        if self.tool == "python":
            return self._python(
                ["closed", "--concurrency", str(concurrency), "--duration", str(duration)],
                port,
                duration,
            )
        self._runs += 1
        log = self._workdir / f"h2load-{self._runs}.log"
        log.unlink(missing_ok=True)
        cmd = h2load_command(port, concurrency, duration, self._body, log)
        proc = _run(cmd, timeout=duration + 30)
        elapsed, counters = parse_h2load(proc.stdout)
        latencies = _read_h2load_log(log)
        log.unlink(missing_ok=True)
        errors = {key: counters[key] for key in ("failed", "errored", "timeout") if counters[key]}
        if counters["2xx"] != counters["succeeded"]:
            errors["non_2xx"] = counters["succeeded"] - counters["2xx"]
        return LoadResult(
            tool="h2load",
            requests=counters["2xx"],
            errors=errors,
            elapsed=elapsed,
            latencies_us=latencies,
            command=self._shown(cmd, port),
            extra={"started": counters["started"]},
        )

    def _shown(self, cmd: list[str], port: int) -> str:
        """The command as the report shows it: no temp paths, PORT for the server's port."""
        text = _display(cmd).replace(f"127.0.0.1:{port}/", "127.0.0.1:PORT/")
        text = re.sub(r"h2load-\d+\.log", "run.log", text)
        return text.replace(str(self._workdir), "$WORKDIR")

    def warm_up(self, port: int, seconds: float, concurrency: int = 16) -> None:
        """Unmeasured load so the first measured run finds a warm server."""
        if self.tool == "python":
            self._python(
                ["closed", "--concurrency", str(concurrency), "--duration", str(seconds)],
                port,
                seconds,
            )
            return
        _run(h2load_command(port, concurrency, seconds, self._body, None), timeout=seconds + 30)

    def paced(self, port: int, rate: float, duration: float) -> LoadResult:
        """Open loop at `rate` calls per second for `duration` seconds."""
        return self._python(
            ["paced", "--rate", str(rate), "--duration", str(duration)], port, duration
        )

    def stream(
        self, port: int, route: str, samples: int, concurrency: int, stagger_ms: float = 0.0
    ) -> LoadResult:
        """`samples` StreamComplete calls; latencies are times to the first chunk. Worker k
        starts k × `stagger_ms` late, so concurrent streams do not all answer at once."""
        args = ["stream", "--route", route, "--samples", str(samples)]
        args += ["--concurrency", str(concurrency), "--stagger-ms", f"{stagger_ms:g}"]
        return self._python(args, port, samples * 0.5)

    def _python(self, args: list[str], port: int, duration: float) -> LoadResult:
        cmd = [sys.executable, "-m", "tests.bench.load", *args, "--port", str(port)]
        proc = _run(cmd, timeout=duration + 60)
        data = json.loads(proc.stdout)
        return LoadResult(
            tool="python",
            requests=data["requests"],
            errors=data["errors"],
            elapsed=data["elapsed"],
            latencies_us=sorted(data["latencies_us"]),
            command="python -m tests.bench.load " + " ".join(args) + " --port PORT",
            extra=data.get("extra", {}),
        )


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired as e:
        raise LoadError(f"{cmd[0]} did not finish within {timeout:.0f}s: {_display(cmd)}") from e
    if proc.returncode != 0:
        raise LoadError(
            f"{_display(cmd)} exited {proc.returncode}:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        )
    return proc


# --- the asyncio client (python -m tests.bench.load) ----------------------------------------


async def _closed_loop(stub, request, expected: str, concurrency: int, duration: float) -> dict:
    import grpc

    latencies: list[int] = []
    errors: Counter[str] = Counter()
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                response = await stub.Complete(request, timeout=_CALL_TIMEOUT)
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] += 1
                continue
            if response.content != expected:
                errors["bad_response"] += 1
                continue
            latencies.append(round((time.perf_counter() - sent) * 1e6))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "elapsed": elapsed,
        "latencies_us": latencies,
    }


async def _paced(stub, request, expected: str, rate: float, duration: float) -> dict:
    import grpc

    latencies: list[int] = []
    errors: Counter[str] = Counter()
    lags: list[float] = []
    total = max(1, round(rate * duration))

    async def one() -> None:
        sent = time.perf_counter()
        try:
            response = await stub.Complete(request, timeout=_CALL_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            errors[e.code().name] += 1
            return
        if response.content != expected:
            errors["bad_response"] += 1
            return
        latencies.append(round((time.perf_counter() - sent) * 1e6))

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter() + 0.02
    for i in range(total):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        lags.append(time.perf_counter() - due)
        tasks.append(asyncio.create_task(one()))
    last_sent = time.perf_counter()
    await asyncio.gather(*tasks)
    lags.sort()
    sent_rate = (total - 1) / (last_sent - start) if total > 1 else rate
    return {
        "requests": len(latencies),
        "errors": errors,
        "elapsed": time.perf_counter() - start,
        "latencies_us": latencies,
        "extra": {
            "sent_rate": sent_rate,
            "lag_p50_ms": lags[len(lags) // 2] * 1e3,
            "lag_p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1e3,
        },
    }


async def _streams(stub, request, samples: int, concurrency: int, stagger: float) -> dict:
    import grpc

    firsts: list[int] = []
    errors: Counter[str] = Counter()
    remaining = samples

    async def worker(k: int) -> None:
        nonlocal remaining
        await asyncio.sleep(k * stagger)
        while remaining > 0:
            remaining -= 1
            sent = time.perf_counter()
            first: float | None = None
            chunks = 0
            try:
                async for _ in stub.StreamComplete(request, timeout=_CALL_TIMEOUT):
                    if first is None:
                        first = time.perf_counter() - sent
                    chunks += 1
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] += 1
                continue
            if first is None or chunks < 2:
                errors["bad_response"] += 1
                continue
            firsts.append(round(first * 1e6))

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return {
        "requests": len(firsts),
        "errors": errors,
        "elapsed": time.perf_counter() - started,
        "latencies_us": firsts,
    }


async def _client_main(args: argparse.Namespace) -> dict:
    import grpc
    from aigw.v1 import completion_pb2_grpc

    from tests.bench.payload import PROMPT, UNARY_ROUTE, bench_request

    async with grpc.aio.insecure_channel(f"127.0.0.1:{args.port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = completion_pb2_grpc.CompletionStub(channel)
        if args.mode == "closed":
            return await _closed_loop(
                stub, bench_request(UNARY_ROUTE), PROMPT, args.concurrency, args.duration
            )
        if args.mode == "paced":
            return await _paced(stub, bench_request(UNARY_ROUTE), PROMPT, args.rate, args.duration)
        return await _streams(
            stub, bench_request(args.route), args.samples, args.concurrency, args.stagger_ms / 1000
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.load")
    parser.add_argument("mode", choices=["closed", "paced", "stream"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--route", default="echo-stream")
    parser.add_argument("--stagger-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    gc.freeze()  # the start-up objects need no collecting; keeps the client's pauses short
    result = asyncio.run(_client_main(args))
    result["errors"] = dict(result["errors"])
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
