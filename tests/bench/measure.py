"""What the harness reads off a server and the machine: CPU time, memory, /metrics, percentiles.

- `ProcStats.read(pid)`: CPU time (all threads) from ``/proc/PID/stat``, VmRSS and VmHWM
  from ``/proc/PID/status``, summed over the process and its live descendants
  (`process_tree`): aigw serve is a supervisor and the processes it spawns.
- `percentile`: nearest-rank percentile of a sorted sample.
- `parse_prometheus` / `status_counts` / `export_counters`: the few `/metrics` series the
  harness checks (gRPC status of every call the load made; what the exporters did).
- `store_counts`: the trace store's own count of spans by event (written, dropped …).
- `tree_cpu_seconds`: `ProcStats.read(pid).cpu_seconds`, 0.0 once gone (a PostgreSQL cluster).
- `Scraper`: GET `/metrics` every second on its own thread, as a Prometheus server would.
- `machine_info` / `package_versions`: the header of BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProcStats",
    "Scraper",
    "cpu_times",
    "export_counters",
    "fetch_metrics",
    "machine_info",
    "package_versions",
    "parse_prometheus",
    "percentile",
    "process_tree",
    "source_state",
    "status_counts",
    "store_counts",
    "tree_cpu_seconds",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
COMPLETE_METHOD = "aigw.v1.Completion/Complete"
PACKAGES = (
    "grpcio",
    "protobuf",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-exporter-prometheus",
    "prometheus-client",
    "psycopg",
    "psycopg-binary",
    "aigw",
)


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (which may hold spaces and
    parentheses), so field N of proc(5) is at index N - 3."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2 :].split()


def _cpu_ticks(fields: Sequence[str]) -> int:
    # utime stime cutime cstime: cutime/cstime are the children that exited and were waited
    # for, so a member of a tree that ended keeps counting in its parent.
    return sum(int(x) for x in fields[11:15])


def process_tree(root: int) -> list[int]:
    """`root` and its live descendants (by the ppid of ``/proc/PID/stat``), root first.

    Raises OSError when `root` is gone. A process reparented to init (its parent died before
    it) is no longer found: the trees measured here (aigw's supervisor and the children it
    spawns, a postmaster and its backends) keep their children for their whole life."""
    _stat_fields(root)  # OSError now, rather than an empty tree later
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, pending = [root], [root]
    while pending:
        for child in children.get(pending.pop(), []):
            tree.append(child)
            pending.append(child)
    return tree


@dataclass(frozen=True)
class ProcStats:
    """One reading of a process tree: CPU seconds so far and memory in bytes, each summed over
    the root and its live descendants (for aigw: the supervisor, the telemetry process, the
    serving processes and multiprocessing's resource tracker; a bare server is a tree of one).

    CPU is utime+stime+cutime+cstime of every member (all threads): a child that exits and is
    waited for (multiprocessing reaps the children it restarts) moves its CPU into its
    parent's cutime, so the sum stays continuous across a restart, except for the moments
    between a child's exit and its reaping and for a child orphaned before its parent; the
    harness takes differences of readings around each run, which holds as long as the tree
    keeps the same members through the run. RSS and HWM are sums of VmRSS and VmHWM: pages
    shared between members (shared libraries) count once per member, and the members' peaks
    need not have coincided, so the HWM sum is an upper bound of the tree's peak."""

    cpu_seconds: float
    rss_bytes: int
    hwm_bytes: int
    processes: int = 1

    @classmethod
    def read(cls, pid: int) -> ProcStats:
        """The tree rooted at `pid`; OSError when `pid` is gone (members that end while they
        are read are left out)."""
        ticks = rss = hwm = members = 0
        for member in process_tree(pid):
            try:
                fields = _stat_fields(member)
                with open(f"/proc/{member}/status", encoding="ascii") as f:
                    status = f.read()
            except OSError:
                if member == pid:
                    raise
                continue
            members += 1
            ticks += _cpu_ticks(fields)
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm += int(line.split()[1]) * 1024
        return cls(ticks / _CLK_TCK, rss, hwm, members)


def cpu_times() -> tuple[int, int]:
    """(steal, total) clock ticks of the whole machine so far, from /proc/stat.

    Steal is time the hypervisor gave this VM's CPUs to someone else: the best single sign
    that a shared machine was busy while we measured."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    # user nice system idle iowait irq softirq steal guest guest_nice; guests are in user.
    steal = fields[7] if len(fields) > 7 else 0
    return steal, sum(fields[:8])


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence; nan when empty."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --- /metrics -------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = tuple[tuple[str, str], ...]


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """{metric name: [(labels, value)]} for every sample line of a text exposition."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        samples.setdefault(name, []).append((dict(_LABEL.findall(labels or "")), number))
    return samples


def fetch_metrics(port: int, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return r.read().decode("utf-8")


def status_counts(text: str, method: str = COMPLETE_METHOD) -> dict[str, int]:
    """{gRPC status name: calls} the gateway recorded for `method` (cumulative)."""
    counts: dict[str, int] = {}
    for labels, value in parse_prometheus(text).get("rpc_server_call_duration_seconds_count", []):
        if labels.get("rpc_method") == method:
            code = labels.get("rpc_response_status_code", "?")
            counts[code] = counts.get(code, 0) + int(value)
    return counts


def export_counters(text: str) -> dict[str, int]:
    """The exporter and trace-store self-metrics, flattened to `name{label=value}` → count."""
    wanted = (
        "aigw_telemetry_spans_exported_total",
        "aigw_telemetry_spans_dropped_total",
        "aigw_telemetry_metrics_exports_total",
        "aigw_trace_store_spans_total",
    )
    parsed = parse_prometheus(text)
    out: dict[str, int] = {}
    for name in wanted:
        for labels, value in parsed.get(name, []):
            if not value:
                continue
            tag = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if v)
            out[f"{name.removesuffix('_total')}{{{tag}}}"] = int(value)
    return out


STORE_EVENTS = ("written", "dropped", "failed", "evicted")


def store_counts(text: str) -> dict[str, int]:
    """{event: spans} of `aigw_trace_store_spans_total` (cumulative), every event present."""
    counts = dict.fromkeys(STORE_EVENTS, 0)
    for labels, value in parse_prometheus(text).get("aigw_trace_store_spans_total", []):
        event = labels.get("event", "?")
        counts[event] = counts.get(event, 0) + int(value)
    return counts


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of the tree rooted at `pid` (see `ProcStats`): a PostgreSQL postmaster and
    its backends. 0.0 when the process is gone."""
    try:
        return ProcStats.read(pid).cpu_seconds
    except OSError:
        return 0.0


class Scraper:
    """Scrape `/metrics` every `interval` seconds while running (a Prometheus stand-in)."""

    def __init__(self, port: int, interval: float = 1.0) -> None:
        self._port = port
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.scrapes = 0
        self.failures = 0
        self.seconds: list[float] = []

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    @contextlib.contextmanager
    def running(self) -> Iterator[Scraper]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                fetch_metrics(self._port)
                self.scrapes += 1
                self.seconds.append(time.monotonic() - started)
            except OSError:
                self.failures += 1
            next_at += self._interval
            self._stop.wait(max(next_at - time.monotonic(), 0))


# --- the machine ----------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    model, cores = "unknown", 0
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("processor"):
                cores += 1
    mem = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    load = "unknown"
    with contextlib.suppress(OSError), open("/proc/loadavg", encoding="ascii") as f:
        load = " ".join(f.read().split()[:3])
    return {
        "cpu": model,
        "cores": str(cores or os.cpu_count() or "?"),
        "memory": mem,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load average at start": load,
        "h2load": h2load_version(),
    }


def h2load_version() -> str:
    path = shutil.which("h2load")
    if path is None:
        return "not installed (Python client used for closed-loop runs)"
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return path
    return out or path


def source_state(repo: Path) -> str:
    """The commit measured, and which files of the gateway's code differed from it when the
    run started (the working tree may hold changes not committed yet)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(repo), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD").strip()
    if not commit:
        return "unknown (not a git checkout)"
    changed = git("status", "--porcelain", "--", "gateway", "admin", "protos", "pyproject.toml")
    files = [line[3:] for line in changed.splitlines() if line.strip()]
    if not files:
        return f"commit {commit}, gateway code as committed"
    return f"commit {commit} + uncommitted changes to {', '.join(sorted(files))}"


def package_versions(names: Sequence[str] = PACKAGES) -> Mapping[str, str]:
    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
