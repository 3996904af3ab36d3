"""`python -m tests.bench`, tiny: the harness runs end to end and its output has the right shape.

Only the format is checked, never a number: this machine may be busy. Without h2load
(`make test` does not install it) the harness falls back to its Python client.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.bench.load import parse_h2load

REPO = Path(__file__).resolve().parents[1]

HEADINGS = (
    "# aigw benchmarks",
    "## Summary",
    "## Targets",
    "## Machine and software",
    "## Method",
    "## Results by scenario",
    "## Ratios against the baseline (same run)",
    "## Streaming: time to first token",
    "## Profile findings",
    "## What each optimisation bought",
)


def test_tiny_run_prints_summary_lines_and_writes_markdown(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    # A report from an earlier run, with a hand-written section the new run must keep.
    out.write_text(
        "old\n<!-- hand-written: optimisations -->\nour notes\n"
        "<!-- /hand-written: optimisations -->\n"
    )
    real = REPO / "BENCHMARKS.md"
    real_before = real.read_bytes() if real.exists() else None
    cmd = [sys.executable, "-m", "tests.bench", "--out", str(out)]
    cmd += ["--scenarios", "baseline,minimal", "--concurrency", "1", "--duration", "1"]
    cmd += ["--rate", "50", "--rate-duration", "1", "--rounds", "1", "--warmup", "0.3"]
    cmd += ["--stream-samples", "8", "--stream-delay-ms", "5", "--workdir", str(tmp_path / "w")]

    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=100, check=False)

    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    assert [line.split()[1] for line in lines] == ["baseline", "minimal"]
    for line in lines:
        assert re.search(r" c1=\d+/s p50=[\d.]+ms p99=[\d.]+ms \| r50=\d+/s p50=", line), line
        assert re.search(r"cpu=[\d.]+s/1k rss=\d+MiB ttft\+=-?[\d.]+ms", line), line
    assert re.search(r"vs_baseline c1=[\d.]+x$", lines[1]), lines[1]

    text = out.read_text()
    positions = [text.find(heading) for heading in HEADINGS]
    assert -1 not in positions, positions
    assert positions == sorted(positions), positions
    assert all(line in text for line in lines)
    assert re.search(r"^\| c1 \| [\d,]+ \(", text, re.MULTILINE)
    assert re.search(
        r"^\| added p50 at 50 req/s \| minimal \| .* \| \*\*(PASS|FAIL)\*\* \|$", text, re.M
    )
    assert "our notes" in text
    assert "_No profile recorded yet._" in text
    assert text.count("<!-- hand-written:") == 2
    assert (real.read_bytes() if real.exists() else None) == real_before


def test_tiny_fleet_run_reports_store_rows_and_convergence(tmp_path: Path) -> None:
    """The fleet scenario (PostgreSQL, which `make test` installs) and the fleet
    micro-benchmarks, each as small as they go: only the report's shape is checked."""
    out = tmp_path / "BENCHMARKS.md"
    cmd = [sys.executable, "-m", "tests.bench", "--out", str(out), "--scenarios", "fleet"]
    cmd += ["--concurrency", "1", "--duration", "0.5", "--rate", "0", "--rounds", "1"]
    cmd += ["--warmup", "0", "--stream-samples", "0", "--fleet-sets", "1", "--fleet-batches", "1"]
    cmd += ["--workdir", str(tmp_path / "w")]

    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=150, check=False)

    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    bench = [line for line in lines if line.startswith("BENCH ")]
    assert len(bench) == 1, lines
    assert re.search(r"^BENCH fleet +c1=\d+/s .* store_rows_max=\d+/s dropped=\d+$", bench[0])
    assert any(
        re.fullmatch(r"FLEET store_write batch=512 sqlite=\d+/s postgres=\d+/s "
                     r"postgres_async_commit=\d+/s postgres_vs_sqlite=[\d.]+x", line)
        for line in lines
    ), lines  # fmt: skip
    assert any(
        re.fullmatch(r"FLEET convergence replicas=3 sets=1 min=\d+ms median=\d+ms max=\d+ms "
                     r"not_applied=0", line)
        for line in lines
    ), lines  # fmt: skip

    text = out.read_text()
    assert "## Fleet: PostgreSQL trace store and config" in text
    assert re.search(r"^\| c1 \| [\d,]+ \| [\d,]+ \([\d,]+–[\d,]+\) \| ", text, re.M)
    assert re.search(r"^\| PostgreSQL \| 512 \| \*\*[\d,]+\*\* \| [\d.]+ \|", text, re.M)
    assert re.search(r"^\| \*\*every other replica has it\*\* \| \*\*[\d,]+\*\* \|", text, re.M)
    assert re.search(r"^\| trace store in PostgreSQL keeps up .* \| fleet \|", text, re.M)
    assert "AIGW_DATABASE_URL=postgresql://… " in text
    assert "aigw_test:" not in text  # the cluster's URL (and password) stays out of the report


def test_h2load_summary_is_parsed() -> None:
    stdout = """\
finished in 3.00s, 1884.67 req/s, 337.00KB/s
requests: 5654 total, 5670 started, 5654 done, 5650 succeeded, 4 failed, 4 errored, 0 timeout
status codes: 5650 2xx, 0 3xx, 0 4xx, 0 5xx
"""
    elapsed, counters = parse_h2load(stdout)
    assert elapsed == 3.0
    assert (counters["started"], counters["2xx"], counters["failed"]) == (5670, 5650, 4)
