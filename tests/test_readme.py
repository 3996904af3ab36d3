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
