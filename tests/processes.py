"""Gateways as real processes, for what only a process can show: signals, kill -9, exit codes."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["clean_env", "start_gateway_process", "stop_process"]

_LISTENING = re.compile(r"serving gRPC on [\d.]+:(\d+), metrics on http://[\d.]+:(\d+)/metrics")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any OTEL_* or AIGW_* variable, plus `extra`.

    Every gateway process a test starts gets this: a CI runner or an operator's shell that
    exports OTEL_EXPORTER_OTLP_ENDPOINT or AIGW_ADMIN_TOKEN must not change what a test sees.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AIGW_"))}
    return {**base, "PYTHONUNBUFFERED": "1", **(extra or {})}


async def start_gateway_process(
    *args: str, state_dir: Path, env: Mapping[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, int, int]:
    """Start `python -m gateway serve` on free ports; answer (process, grpc port, metrics port).

    stderr stays a pipe that is drained in the background, so a chatty gateway never blocks.
    The environment is `clean_env(env)`. `args` come after the defaults, so a later
    `--listen` wins.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve",
        "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
        "--state-dir", str(state_dir), *args,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(env),
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stderr.readline()).decode()
            lines.append(line)
            if not line:
                raise AssertionError("gateway exited before listening:\n" + "".join(lines))
            if match := _LISTENING.search(line):
                break
    stream = proc.stderr

    async def drain() -> None:
        while line := await stream.readline():
            lines.append(line.decode())

    # The whole log stays readable as `proc.log_lines` (secrets checks grep it).
    proc.log_lines = lines  # type: ignore[attr-defined]
    proc.drain_task = asyncio.get_running_loop().create_task(drain())  # type: ignore[attr-defined]
    return proc, int(match.group(1)), int(match.group(2))


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    task = getattr(proc, "drain_task", None)
    if task is not None:
        await task
