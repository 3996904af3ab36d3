"""Where the gateway's CPU goes under load: py-spy on `aigw serve`, samples grouped by component.

    pip install py-spy                          # not a project dependency
    python -m tests.bench.profiling             # full telemetry, concurrency 16, 20 s
    python -m tests.bench.profiling --scenario minimal --seconds 30 --keep /tmp/prof

Starts the scenario's processes exactly as `make bench` does (aigw, OTLP sink, export switched
on through the admin API, `/metrics` scraped every second), warms up, then runs h2load at the
given concurrency while `py-spy record --threads --nonblocking --format raw` samples the
gateway. The report groups samples:

- by thread (the event loop's MainThread is the request path; the trace-store writer, the span
  exporter and the metric reader run beside it and compete for the GIL);
- on the request path, by *component*: each sample goes to the deepest frame that belongs to a
  known component (interceptor, GenAI telemetry, OTel SDK spans or metrics, the trace-store
  and span-export processors' `on_end`, protobuf, grpc, asyncio …), so stdlib frames (locks,
  time) count for whoever called them;
- by function, inclusive and self.

The raw samples are kept with `--keep DIR` (e.g. for flamegraph.pl or speedscope).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tests.bench.load import Loader, LoadResult
from tests.bench.measure import Scraper
from tests.bench.payload import bench_request, grpc_frame
from tests.bench.scenarios import SCENARIOS
from tests.bench.servers import configure_export, start_aigw, start_sink

__all__ = ["Profile", "main"]

# (component, path fragments); the first component whose fragment occurs in a frame's file wins.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("protobuf", ("google/protobuf/",)),
    ("trace store processor (on_end)", ("gateway/telemetry/trace_store_processor.py",)),
    ("trace store (SQLite writer)", ("gateway/telemetry/trace_store", "sqlite3/")),
    ("span export processor (on_end)", ("gateway/telemetry/span_export.py",)),
    (
        "OTLP exporters",
        (
            "gateway/telemetry/otlp_",
            "opentelemetry/exporter/otlp/",
            "requests/",
            "urllib3/",
            "http/client.py",
        ),
    ),
    ("OTel SDK metrics", ("opentelemetry/sdk/metrics/",)),
    ("Prometheus (scrape)", ("prometheus_client/", "opentelemetry/exporter/prometheus/")),
    ("OTel SDK spans", ("opentelemetry/sdk/trace/", "opentelemetry/sdk/util/")),
    (
        "OTel API (context, attributes, propagation)",
        (
            "opentelemetry/trace/",
            "opentelemetry/context/",
            "opentelemetry/propagate",
            "opentelemetry/propagators/",
            "opentelemetry/baggage/",
            "opentelemetry/attributes/",
            "opentelemetry/util/",
            "opentelemetry/metrics/",
        ),
    ),
    ("GenAI telemetry (genai.py, labels.py)", ("gateway/telemetry/genai.py", "labels.py")),
    ("gateway metrics wrapper (metrics.py)", ("gateway/telemetry/metrics.py",)),
    ("telemetry interceptor", ("gateway/telemetry/interceptor.py",)),
    ("auth interceptor", ("gateway/auth.py",)),
    (
        "servicer, validation, router, echo",
        (
            "gateway/completion.py",
            "gateway/validation.py",
            "gateway/router.py",
            "gateway/providers/",
            "gateway/chat.py",
            "gateway/errors.py",
        ),
    ),
    ("grpc (Python/Cython)", ("grpc/",)),
    ("asyncio event loop", ("asyncio/",)),
)
OTHER = "other (stdlib, interpreter)"


def _frame_file(frame: str) -> str:
    # "func (path:line)" → path
    if frame.endswith(")") and " (" in frame:
        return frame[frame.rindex(" (") + 2 : -1].rsplit(":", 1)[0]
    return ""


def _frame_function(frame: str) -> str:
    """`func (…/pkg/module.py)` without the line number, with a shortened path."""
    if not (frame.endswith(")") and " (" in frame):
        return frame
    name = frame[: frame.rindex(" (")]
    path = _frame_file(frame)
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("/lib"):
                path = path.split("/", 1)[1] if "/" in path else path
            break
    else:
        path = path.split("/work/main/", 1)[-1].split("/aigw-exp/", 1)[-1]
    return f"{name} ({path})"


def component_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        path = _frame_file(frame)
        for name, fragments in COMPONENTS:
            if any(f in path for f in fragments):
                return name
    return OTHER


class Profile:
    """Collapsed py-spy samples (`--threads` raw format), grouped."""

    def __init__(self, lines: Iterable[str], roles: dict[int, str] | None = None) -> None:
        """`roles`: what each process of `aigw serve` is (pid → "telemetry", "serving-0" …);
        a thread is then named "<role> <thread>", e.g. "serving-0 MainThread"."""
        self.stacks: list[tuple[str, list[str], int]] = []
        roles = roles or {}
        for line in lines:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            role = ""
            # `--subprocesses` puts the process chain first: `process PID:"cmdline";` frames
            # (a command line may hold a ";" itself); the last one is the sampled process.
            chain = _PROCESS_CHAIN.match(stack)
            if chain is not None and chain.group(1):
                pid = int(_PROCESS_FRAME.findall(chain.group(1))[-1])
                role = roles.get(pid, f"pid {pid}")
                stack = stack[chain.end(1) :]
            frames = stack.split(";")
            if not frames:
                continue
            thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
            label = f"{role} {thread}" if role else thread
            self.stacks.append((label, frames[1:], int(count)))
        self.request_thread = next(
            (t for t, _, _ in self.stacks if t.startswith("serving") and t.endswith("MainThread")),
            "MainThread",
        )

    @property
    def total(self) -> int:
        return sum(n for _, _, n in self.stacks)

    def threads(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for thread, _, n in self.stacks:
            out[thread] += n
        return out

    def components(self, thread: str = "") -> Counter[str]:
        thread = thread or self.request_thread
        out: Counter[str] = Counter()
        for name, frames, n in self.stacks:
            if name == thread:
                out[component_of(frames)] += n
        return out

    def functions(self, thread: str = "") -> tuple[Counter[str], Counter[str]]:
        """(inclusive, self) sample counts by function."""
        thread = thread or self.request_thread
        inclusive: Counter[str] = Counter()
        own: Counter[str] = Counter()
        for name, frames, n in self.stacks:
            if name != thread or not frames:
                continue
            for fn in {_frame_function(f) for f in frames}:
                inclusive[fn] += n
            own[_frame_function(frames[-1])] += n
        return inclusive, own

    def report(self, top: int = 30) -> list[str]:
        total = self.total or 1
        lines = [f"samples: {self.total}", "", "by thread (share of all samples):"]
        for thread, n in self.threads().most_common():
            lines.append(f"  {n / total:6.1%}  {thread}")
        main = sum(n for t, _, n in self.stacks if t == self.request_thread) or 1
        lines += ["", f"request path ({self.request_thread}) by component, deepest frame wins:"]
        for name, n in self.components().most_common():
            lines.append(f"  {n / main:6.1%}  {name}")
        inclusive, own = self.functions()
        lines += ["", f"request path: top {top} functions, inclusive:"]
        for fn, n in inclusive.most_common(top):
            lines.append(f"  {n / main:6.1%}  {fn}")
        lines += ["", f"request path: top {top} functions, self:"]
        for fn, n in own.most_common(top):
            lines.append(f"  {n / main:6.1%}  {fn}")
        return lines


def record(args: argparse.Namespace, workdir: Path) -> Path:
    scenario = SCENARIOS[args.scenario]
    if not scenario.aigw:
        raise SystemExit("profile an aigw scenario (minimal, full, refused, blackhole)")
    body = workdir / "complete-request.bin"
    body.write_bytes(grpc_frame(bench_request()))
    loader = Loader(workdir, body, tool="h2load")
    sink = start_sink(workdir) if scenario.traces else None
    server = start_aigw(scenario.name, workdir, 50)
    raw = workdir / "py-spy.raw.txt"
    try:
        if sink is not None and scenario.traces is not None:
            configure_export(server, sink.urls[scenario.traces], sink.urls["live_metrics"])
        server.check(calls=3)
        loader.warm_up(server.port, args.warmup)
        scraper = Scraper(server.metrics_port) if scenario.scrape and server.metrics_port else None
        results: list[LoadResult] = []
        load = threading.Thread(
            target=lambda: results.append(
                loader.closed(server.port, args.concurrency, args.seconds + 2)
            )
        )
        with scraper.running() if scraper else contextlib.nullcontext():
            load.start()
            time.sleep(1)
            # `aigw serve` is a supervisor: its serving and telemetry processes are sampled too.
            cmd = ["py-spy", "record", "--pid", str(server.pid), "--rate", str(args.rate)]
            cmd += ["--subprocesses"]
            cmd += ["--duration", str(args.seconds), "--format", "raw", "--threads"]
            cmd += ["--full-filenames", "--output", str(raw)]
            # --native unwinds C frames (grpc's Cython core, upb) and needs the process paused.
            cmd.append("--native" if args.native else "--nonblocking")
            if args.gil:
                cmd.append("--gil")
            subprocess.run(cmd, check=True, capture_output=True, timeout=args.seconds + 60)
            load.join()
        for result in results:
            print(
                f"load while sampled: {result.throughput:.0f} req/s at concurrency "
                f"{args.concurrency}, errors {result.errors or 0}",
                file=sys.stderr,
            )
        _roles_file(raw).write_text(json.dumps(roles_of(server.log)))
    finally:
        server.stop()
        if sink is not None:
            sink.stop()
    return raw


_PROCESS_CHAIN = re.compile(r'((?:process \d+:"[^"]*";)*)')
_PROCESS_FRAME = re.compile(r'process (\d+):"')
_SERVING_LINE = re.compile(r"serving process\(es\), pids ([\d,]+); telemetry process pid (\d+)")


def roles_of(log: Path) -> dict[int, str]:
    """pid → role, from the supervisor's start-up line."""
    match = _SERVING_LINE.search(log.read_text(errors="replace"))
    if match is None:
        return {}
    roles = {int(pid): f"serving-{i}" for i, pid in enumerate(match.group(1).split(","))}
    roles[int(match.group(2))] = "telemetry"
    return roles


def _roles_file(raw: Path) -> Path:
    return raw.with_suffix(".roles.json")


def load_profile(raw: Path) -> Profile:
    roles_file = _roles_file(raw)
    roles = (
        {int(k): v for k, v in json.loads(roles_file.read_text()).items()}
        if roles_file.exists()
        else {}
    )
    return Profile(raw.read_text().splitlines(), roles)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profiling")
    parser.add_argument("--scenario", default="full", choices=list(SCENARIOS))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--native", action="store_true", help="C frames too (pauses the process)")
    parser.add_argument("--keep", type=Path, help="directory for the raw samples and logs")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--from-raw", type=Path, help="only report on an existing raw file")
    args = parser.parse_args(argv)
    if args.from_raw is None and (shutil.which("py-spy") is None or not shutil.which("h2load")):
        raise SystemExit(
            "needs py-spy (pip install py-spy) and h2load (apt install nghttp2-client)"
        )
    if args.from_raw is not None:
        raw = args.from_raw
    elif args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        raw = record(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="aigw-profile-") as tmp:
            raw = record(args, Path(tmp))
            print("\n".join(load_profile(raw).report(args.top)))
            return 0
    print("\n".join(load_profile(raw).report(args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
