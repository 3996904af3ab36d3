"""History and rollback on the embedded (file) backend, through the API and `aigw-admin`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aigw.v1 import admin_pb2, otel_config_pb2

from admin import cli
from admin.config_store_file import MAX_HISTORY, FileConfigStore
from gateway.server import OTEL_CONFIG_FILE
from tests.clients import open_client
from tests.conftest import GatewayFactory

SECRET = "file-history-secret-77aa31"


def section(endpoint: str, **kw: object) -> otel_config_pb2.OtelConfig:
    return otel_config_pb2.OtelConfig(
        traces=otel_config_pb2.ExporterConfig(enabled=False, endpoint=endpoint, **kw)
    )


@pytest.fixture(autouse=True)
def _clean_cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIGW_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("AIGW_ADDR", raising=False)


async def test_history_rollback_and_the_cli(
    gateway_factory: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = await gateway_factory(state_dir=tmp_path / "s", env={"AIGW_ADMIN_TOKEN": "t0ken-abc123"})
    meta = (("authorization", "Bearer t0ken-abc123"),)
    async with open_client(gw) as client:
        admin = client.admin
        await admin.SetOtelConfig(
            admin_pb2.SetOtelConfigRequest(
                config=section("http://127.0.0.1:4001/v1/traces", headers={"x-key": SECRET})
            ),
            metadata=meta,
        )
        await admin.SetOtelConfig(
            admin_pb2.SetOtelConfigRequest(config=section("http://127.0.0.1:4002/v1/traces")),
            metadata=meta,
        )
        history = await admin.ListOtelConfigHistory(
            admin_pb2.ListOtelConfigHistoryRequest(), metadata=meta
        )
        assert [(v.version, v.author, v.action) for v in history.versions] == [
            (2, "admin", "set"),
            (1, "admin", "set"),
        ]
        assert SECRET not in str(history)
        rolled = await admin.RollbackOtelConfig(
            admin_pb2.RollbackOtelConfigRequest(version=1), metadata=meta
        )
        assert rolled.version == 3
        assert rolled.config.traces.endpoint == "http://127.0.0.1:4001/v1/traces"
        assert dict(rolled.config.traces.headers) == {"x-key": "********"}
        # The secret came back with it (masked on the wire, real in the running config).
        assert gw.otel is not None
        assert gw.otel.settings.traces.header_dict == {"x-key": SECRET}
        replicas = await admin.ListReplicas(admin_pb2.ListReplicasRequest(), metadata=meta)
        assert [r.instance_id for r in replicas.replicas] == [gw.instance_id]
        assert replicas.converged
        assert replicas.current_version == 3
        got = await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), metadata=meta)
        assert got.store.backend == "file"
        assert got.store.connected

    # The history survives a restart.
    await gw.stop(grace=0.1)
    stored = FileConfigStore(tmp_path / "s" / OTEL_CONFIG_FILE)
    assert [v.version for v in stored.history(page_size=10)] == [3, 2, 1]

    again = await gateway_factory(
        state_dir=tmp_path / "s", env={"AIGW_ADMIN_TOKEN": "t0ken-abc123"}
    )
    addr = ["--addr", f"127.0.0.1:{again.port}", "--timeout", "15"]
    capsys.readouterr()
    monkeypatch.setenv("AIGW_ADMIN_TOKEN", "t0ken-abc123")
    code = await asyncio.to_thread(cli.main, [*addr, "otel", "history"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["3", lines[1].split()[1]]
    assert "rollback to 1" in lines[1]
    assert "admin" in lines[1]
    code = await asyncio.to_thread(cli.main, [*addr, "otel", "rollback", "2"])
    reply = json.loads(capsys.readouterr().out)
    assert code == 0
    assert reply["version"] == "4"
    code = await asyncio.to_thread(cli.main, [*addr, "replicas"])
    out = capsys.readouterr().out
    assert code == 0
    assert "config version 4: converged" in out
    assert again.instance_id in out
    code = await asyncio.to_thread(cli.main, [*addr, "otel", "rollback", "99"])
    assert code == 1
    assert "NOT_FOUND: version: no config version 99" in capsys.readouterr().err


def test_the_file_keeps_the_last_versions_and_reads_format_1(tmp_path: Path) -> None:
    path = tmp_path / OTEL_CONFIG_FILE
    path.write_text(
        json.dumps(
            {
                "format": 1,
                "version": 7,
                "traces": {"enabled": False, "endpoint": "http://127.0.0.1:1/v1/traces"},
                "metrics": {"enabled": False},
            }
        )
    )
    store = FileConfigStore(path)
    loaded = store.load()
    assert loaded is not None
    assert loaded.version == 7
    for _ in range(MAX_HISTORY + 5):
        store.commit(lambda s: s, lambda _: None, author="t", action="set")
    versions = [v.version for v in FileConfigStore(path).history(page_size=1000)]
    assert len(versions) == MAX_HISTORY
    assert versions[0] == 7 + MAX_HISTORY + 5
