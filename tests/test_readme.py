"""The README's grpcurl session works as printed against a live gateway."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from gateway.server import Gateway
from tests.grpcurl import run_grpcurl

README = Path(__file__).resolve().parent.parent / "README.md"


def _grpcurl_lines() -> list[str]:
    text = README.read_text()
    section = text.split("## A grpcurl session", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no sh block in the grpcurl section"
    return [line for line in block.group(1).splitlines() if line.startswith("grpcurl ")]


async def test_every_grpcurl_command_in_the_readme_works(gateway: Gateway) -> None:
    lines = _grpcurl_lines()
    assert len(lines) >= 6
    address = f"127.0.0.1:{gateway.port}"
    outputs = {}
    for line in lines:
        assert "127.0.0.1:50051" in line, "README commands use the default address"
        outputs[line] = await asyncio.to_thread(run_grpcurl, line, address)
    listed = outputs[lines[0]]
    assert {"aigw.v1.Completion", "aigw.v1.AdminService", "grpc.health.v1.Health"} <= set(listed)
    complete = next(v for k, v in outputs.items() if k.endswith("Completion/Complete"))
    answer = json.loads(complete[0])
    assert answer["content"] == "Hello, gateway"
    assert answer["usage"] == {"inputTokens": 3, "outputTokens": 2}
    stream = next(v for k, v in outputs.items() if k.endswith("StreamComplete"))
    chunks = [json.loads(c) for c in stream]
    assert [c.get("delta") for c in chunks[:-1]] == ["one", " two"]
    assert chunks[-1]["finishReason"] == "length"
    health = next(v for k, v in outputs.items() if k.endswith("Health/Check"))
    assert json.loads(health[0]) == {"status": "SERVING"}


def _section_lines(title: str) -> list[str]:
    section = README.read_text().split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, f"no sh block in {title!r}"
    return [line for line in block.group(1).splitlines() if line.startswith("grpcurl ")]


async def test_every_admin_grpcurl_command_in_the_readme_works(gateway: Gateway) -> None:
    from tests.otlp_receivers import GrpcOtlpReceiver, HttpOtlpReceiver

    lines = _section_lines("OTLP export at runtime")
    methods = {line.rsplit("/", 1)[-1] for line in lines}
    assert methods == {"GetOtelConfig", "SetOtelConfig", "TestOtelConfig", "ListTraces", "GetTrace"}
    address = f"127.0.0.1:{gateway.port}"
    # A call first, so ListTraces and GetTrace have something to show.
    await asyncio.to_thread(run_grpcurl, _grpcurl_lines()[3], address)
    assert gateway.telemetry is not None
    await asyncio.to_thread(gateway.telemetry.store_processor.force_flush, 5000)
    with HttpOtlpReceiver() as http, GrpcOtlpReceiver() as grpc_receiver:
        outputs = []
        trace_id = ""
        for line in lines:
            line = line.replace("http://127.0.0.1:4318", http.endpoint)
            line = line.replace("http://127.0.0.1:4317", grpc_receiver.endpoint)
            line = line.replace("TRACE_ID", trace_id)
            out = await asyncio.to_thread(run_grpcurl, line, address)
            outputs.append([json.loads(o) for o in out])
            if line.endswith("ListTraces"):
                # The admin calls above are traced too; GetTrace shows the Completion's trace.
                trace_id = next(
                    t["traceId"]
                    for t in outputs[-1][0]["traces"]
                    if t["rootSpanName"] == "aigw.v1.Completion/Complete"
                )
        got, set_http, set_grpc, tested, listed, trace = (o[0] for o in outputs)
        # Like grpcurl, the JSON leaves out fields at their default (enabled: false).
        assert "enabled" not in got["config"]["traces"]
        assert set_http["version"] == "1"
        assert set_http["config"]["traces"]["headers"] == {"x-scope-orgid": "********"}
        assert set_grpc["version"] == "2"
        assert set_grpc["config"]["metrics"]["temporality"] == "TEMPORALITY_DELTA"
        assert tested["traces"]["success"] is True
        assert listed["traces"]
        assert {s["name"] for s in trace["spans"]} >= {"aigw.v1.Completion/Complete", "chat echo-1"}
        # Stop while the receivers still answer, so the final flush has somewhere to go.
        await gateway.stop(grace=0.5)
