"""The state directory is owner-only, as the README promises, whatever the umask or what was
there before: `gateway.state_dir.private_dir`, and the gateway, trace store and config store
that use it.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, otel_config_pb2

from admin.config_store_file import FileConfigStore
from gateway.state_dir import private_dir
from gateway.telemetry.export_settings import OtelSettings
from gateway.telemetry.trace_store_sqlite import SqliteTraceStore
from tests.conftest import GatewayFactory


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def shared_parent(tmp_path: Path) -> Path:
    """A pre-existing, world-readable parent, like /var/lib."""
    parent = tmp_path / "var-lib"
    parent.mkdir()
    os.chmod(parent, 0o755)  # noqa: S103 - the loose mode under test
    return parent


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277])
def test_every_directory_created_is_0700_whatever_the_umask(shared_parent: Path, mask: int) -> None:
    state = shared_parent / "a" / "b" / "aigw"
    with umask(mask):
        assert private_dir(state) == state
    for d in (shared_parent / "a", shared_parent / "a" / "b", state):
        assert mode(d) == 0o700, d
    assert mode(shared_parent) == 0o755, "an existing parent is never touched"
    (state / "probe").write_text("usable")  # 0277 would have left it 0500 without the chmod


def test_an_existing_loose_state_dir_we_own_is_tightened_once(
    shared_parent: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = shared_parent / "aigw"
    state.mkdir()
    os.chmod(state, 0o755)  # noqa: S103 - the loose mode under test
    (state / "keep").write_text("x")
    with caplog.at_level(logging.INFO, logger="gateway.state_dir"):
        private_dir(state)
        private_dir(state)
    assert mode(state) == 0o700
    assert mode(shared_parent) == 0o755
    assert (state / "keep").read_text() == "x"
    lines = [r for r in caplog.records if r.name == "gateway.state_dir"]
    assert [(r.levelname, r.getMessage()) for r in lines] == [
        ("INFO", f"state directory {state} was 0755; now 0700 (owner only)")
    ]


def test_an_already_private_dir_is_left_without_a_word(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "aigw"
    state.mkdir(mode=0o700)
    os.chmod(state, 0o700)
    with caplog.at_level(logging.DEBUG, logger="gateway.state_dir"):
        private_dir(state)
    assert mode(state) == 0o700
    assert not [r for r in caplog.records if r.name == "gateway.state_dir"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")
def test_a_loose_dir_someone_else_owns_is_left_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "theirs"
    state.mkdir()
    os.chmod(state, 0o750)  # noqa: S103 - the loose mode under test
    os.chown(state, 65534, 65534)
    with caplog.at_level(logging.INFO, logger="gateway.state_dir"):
        private_dir(state)
        private_dir(state)
    assert mode(state) == 0o750
    warnings = [r for r in caplog.records if r.name == "gateway.state_dir"]
    assert len(warnings) == 1
    assert warnings[0].levelname == "WARNING"
    assert "owned by uid 65534" in warnings[0].getMessage()


def test_a_file_where_the_directory_should_be_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "aigw").write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="aigw"):
        private_dir(tmp_path / "aigw")


def test_trace_store_and_config_store_use_it(shared_parent: Path) -> None:
    with umask(0o000):
        with SqliteTraceStore.open(
            shared_parent / "t1" / "t2" / "traces.db", max_spans=1000, max_age_seconds=3600
        ):
            pass
        FileConfigStore(shared_parent / "c1" / "c2" / "otel-config.json").save(OtelSettings())
    for d in ("t1", "t1/t2", "c1", "c1/c2"):
        assert mode(shared_parent / d) == 0o700, d
    assert mode(shared_parent / "t1" / "t2" / "traces.db") == 0o600
    assert mode(shared_parent / "c1" / "c2" / "otel-config.json") == 0o600
    assert mode(shared_parent) == 0o755


async def test_gateway_under_umask_000_keeps_its_state_owner_only(
    shared_parent: Path, gateway_factory: GatewayFactory
) -> None:
    existing = shared_parent / "existing"
    existing.mkdir()
    os.chmod(existing, 0o755)  # noqa: S103 - the loose mode under test
    created = shared_parent / "new" / "deeper" / "aigw"
    with umask(0o000):
        gw_existing = await gateway_factory(state_dir=existing)
        gw_created = await gateway_factory(state_dir=created)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw_created.port}") as ch:
            await admin_pb2_grpc.AdminServiceStub(ch).SetOtelConfig(
                admin_pb2.SetOtelConfigRequest(
                    config=otel_config_pb2.OtelConfig(
                        traces=otel_config_pb2.ExporterConfig(
                            endpoint="http://127.0.0.1:9/v1/traces"
                        )
                    )
                ),
                timeout=5,
            )
    assert gw_existing.port
    assert gw_created.port
    assert mode(existing) == 0o700
    for d in (shared_parent / "new", shared_parent / "new" / "deeper", created):
        assert mode(d) == 0o700, d
    assert mode(shared_parent) == 0o755
    for name in ("traces.db", "otel-config.json"):
        assert mode(created / name) == 0o600, name
