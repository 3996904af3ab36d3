"""The OTLP export config on disk: it survives a restart and wins over the environment, and an
unreadable or tampered state file stops the start naming the file.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from aigw.v1 import otel_config_pb2

from admin.config_store import ConfigStoreError
from gateway.server import OTEL_CONFIG_FILE
from tests.clients import client_for
from tests.otel_config_support import (
    SECRET_AUTH,
    SECRET_KEY,
    TRACE_ID,
    Cfg,
    E,
    StartGateway,
    dur,
    flush_spans,
    metrics_only,
    received_headers,
)
from tests.otlp_receivers import HttpOtlpReceiver

# --- persistence ------------------------------------------------------------------------------


async def test_config_survives_a_restart_and_wins_over_the_environment(
    start_gateway: StartGateway, http_rx: HttpOtlpReceiver, tmp_path: Path
) -> None:
    state = tmp_path / "shared-state"
    gw1 = await start_gateway(state_dir=state)
    channel, c = await client_for(gw1)
    async with channel:
        await c.set(
            Cfg(
                traces=E(
                    enabled=True,
                    endpoint=http_rx.traces_url,
                    headers={"authorization": SECRET_AUTH, "x-api-key": SECRET_KEY},
                    timeout=dur(3),
                ),
                metrics=E(
                    endpoint=http_rx.metrics_url,
                    export_interval=dur(120),
                    temporality=otel_config_pb2.TEMPORALITY_DELTA,
                ),
            )
        )
        saved = await c.get()
    assert saved.version == 1
    await gw1.stop(grace=0.5)

    path = state / OTEL_CONFIG_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["format"] == 2
    assert [v["version"] for v in doc["history"]] == [1]
    assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []  # no temp left

    http_rx.clear()
    # The environment points elsewhere; the stored config must win.
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=from-env",
    }
    gw2 = await start_gateway(state_dir=state, env=env)
    channel, c = await client_for(gw2)
    async with channel:
        restored = await c.get()
        assert (restored.config, restored.version) == (saved.config, saved.version)
        await c.complete(TRACE_ID)
        await flush_spans(gw2)
        # Secrets survived the restart: the export arrives with them.
        arrived = received_headers(http_rx, "/v1/traces")
        assert arrived
        assert {h["authorization"] for h in arrived} == {SECRET_AUTH}
        assert {h["x-api-key"] for h in arrived} == {SECRET_KEY}
        assert (TRACE_ID, "chat echo-1") in {(t, n) for t, _, n in http_rx.spans()}
        # And the version carries on from the stored one.
        assert (await c.set(metrics_only(endpoint=http_rx.metrics_url))).version == 2


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x00\xff\xfe garbage \x13", "corrupt"),
        (b'{"format": 1, "version": 3, "traces": {', "corrupt"),  # torn write
        (b"[1, 2, 3]", "corrupt"),
        (b'{"format": 1, "version": 1}', "corrupt"),  # sections missing
        (b'{"format": 99, "version": 1, "traces": {}, "metrics": {}}', "unknown format 99"),
    ],
)
async def test_an_unreadable_state_file_stops_the_start_naming_the_file(
    start_gateway: StartGateway, tmp_path: Path, content: bytes, problem: str
) -> None:
    """Observed behaviour: `Gateway.start()` raises ConfigStoreError("<path>: corrupt OTEL
    config (<ExceptionType>); fix or remove the file to start from the environment defaults")
    before the gRPC server is created; it neither falls back to the environment nor rewrites
    the file."""
    state = tmp_path / "corrupt-state"
    state.mkdir()
    path = state / OTEL_CONFIG_FILE
    path.write_bytes(content)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    with pytest.raises(ConfigStoreError) as info:
        await start_gateway(state_dir=state, env=env)
    message = str(info.value)
    assert str(path) in message
    assert problem in message
    assert path.read_bytes() == content  # left alone for the operator to inspect


def _stored_doc(**traces: Any) -> dict[str, Any]:
    section = {
        "enabled": False,
        "protocol": "http",
        "endpoint": "",
        "encoding": "proto",
        "headers": [],
        "timeout": 5.0,
        "compression": "none",
        "export_interval": 60.0,
        "temporality": "cumulative",
    }
    return {"format": 1, "version": 4, "traces": {**section, **traces}, "metrics": section}


async def test_a_state_file_with_invalid_values_stops_the_start(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    for n, traces in enumerate(
        [
            {"enabled": True, "endpoint": "ftp://127.0.0.1/v1/traces"},
            {"protocol": "carrier-pigeon", "endpoint": "http://127.0.0.1:9/v1/traces"},
            {"timeout": -5},
            {"headers": [["x-token", "v\r\nx-injected: 1"]], "endpoint": "http://127.0.0.1:9/v"},
        ]
    ):
        state = tmp_path / f"tampered-state{n}"
        state.mkdir()
        path = state / OTEL_CONFIG_FILE
        path.write_text(json.dumps(_stored_doc(**traces)))
        with pytest.raises(ConfigStoreError, match=re.escape(str(path))):
            await start_gateway(state_dir=state)
