"""`aigw-admin` against a live gateway: `admin.cli.main` runs in a thread (it uses a sync gRPC
channel) while the gateway serves on the test's event loop; stdout/stderr via capsys.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest
from aigw.v1 import admin_pb2, otel_config_pb2, traces_pb2
from google.protobuf import struct_pb2, timestamp_pb2

from admin import cli
from admin.otel_config import MASK
from gateway.server import Gateway
from tests.clients import admin_call, complete
from tests.conftest import GatewayFactory
from tests.otel_config_support import StartGateway, flush_spans
from tests.otlp_receivers import HttpOtlpReceiver

SECRET = "Bearer-xyz-5ec7e7-value"
TRACE_A = "0af7651916cd43dd8448eb211c80319c"
TRACE_B = "1bf7651916cd43dd8448eb211c80319d"


@pytest.fixture(autouse=True)
def _clean_cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI reads these from the process environment; an operator's shell must not matter.
    monkeypatch.delenv("AIGW_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("AIGW_ADDR", raising=False)


class Cli:
    def __init__(self, gw: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
        self.addr = f"127.0.0.1:{gw.port}"
        self.capsys = capsys

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()  # drop anything printed before
        code = await asyncio.to_thread(cli.main, ["--addr", self.addr, "--timeout", "15", *argv])
        out, err = self.capsys.readouterr()
        return code, out, err


async def get_config(gw: Gateway) -> admin_pb2.GetOtelConfigResponse:
    return await admin_call(gw, "GetOtelConfig", admin_pb2.GetOtelConfigRequest(), timeout=5)


# --- otel -------------------------------------------------------------------------------------


async def test_otel_get_prints_the_config_as_json_with_masked_headers(
    start_gateway: StartGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await start_gateway()
    await admin_call(
        gw,
        "SetOtelConfig",
        admin_pb2.SetOtelConfigRequest(
            config=otel_config_pb2.OtelConfig(
                traces=otel_config_pb2.ExporterConfig(
                    endpoint="http://127.0.0.1:4318/v1/traces",
                    headers={"Authorization": SECRET},
                )
            )
        ),
        timeout=5,
    )
    code, out, err = await Cli(gw, capsys)("otel", "get")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["version"] == "1"  # uint64 in proto3 JSON is a string
    assert doc["config"]["traces"]["headers"] == {"authorization": MASK}
    assert doc["config"]["traces"]["endpoint"] == "http://127.0.0.1:4318/v1/traces"
    assert doc["config"]["metrics"]["exportInterval"] == "60s"
    assert "health" in doc
    assert SECRET not in out


async def test_otel_set_applies_and_spans_arrive_with_the_header(
    start_gateway: StartGateway, http_rx: HttpOtlpReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await start_gateway()
    run = Cli(gw, capsys)
    code, out, err = await run(
        "otel",
        "set",
        "--traces-enabled",
        "true",
        "--traces-protocol",
        "http",
        "--traces-endpoint",
        http_rx.url("/first/v1/traces"),
        "--traces-header",
        f"authorization={SECRET}",
    )
    assert (code, err) == (0, ""), err
    reply = json.loads(out)
    assert reply["version"] == "1"
    assert reply["config"]["traces"]["enabled"] is True
    assert reply["config"]["traces"]["headers"] == {"authorization": MASK}
    assert SECRET not in out

    await complete(gw, TRACE_A, text="cli test")
    await flush_spans(gw)
    first = [r for r in http_rx.requests if r.path == "/first/v1/traces"]
    assert first
    assert {r.headers["authorization"] for r in first} == {SECRET}
    assert (TRACE_A, "chat echo-1") in {(t, n) for t, _, n in http_rx.spans()}

    # Only the endpoint changes: the CLI sends the masked header back, the secret is kept.
    code, out, err = await run("otel", "set", "--traces-endpoint", http_rx.traces_url)
    assert (code, err) == (0, ""), err
    assert json.loads(out)["version"] == "2"
    http_rx.clear()
    await complete(gw, TRACE_B, text="cli test")
    await flush_spans(gw)
    moved = [r for r in http_rx.requests if r.path == "/v1/traces"]
    assert moved
    assert {r.headers["authorization"] for r in moved} == {SECRET}
    assert (TRACE_B, "chat echo-1") in {(t, n) for t, _, n in http_rx.spans()}
    # Metrics were never touched.
    got = await get_config(gw)
    assert got.config.metrics.enabled is False
    assert got.config.metrics.endpoint == ""


async def test_otel_set_without_flags_exits_2_and_changes_nothing(
    start_gateway: StartGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await start_gateway()
    code, out, err = await Cli(gw, capsys)("otel", "set")
    assert code == 2
    assert out == ""
    assert "nothing to change" in err
    assert (await get_config(gw)).version == 0


async def test_otel_set_rejected_exits_1_with_the_server_message(
    start_gateway: StartGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await start_gateway()
    code, out, err = await Cli(gw, capsys)(
        "otel", "set", "--traces-protocol", "grpc", "--traces-encoding", "json"
    )
    assert code == 1
    assert out == ""
    assert "INVALID_ARGUMENT" in err
    assert "traces.encoding: ENCODING_JSON needs PROTOCOL_HTTP" in err
    assert (await get_config(gw)).version == 0


async def test_otel_set_traces_enabled_false_switches_export_off(
    start_gateway: StartGateway, http_rx: HttpOtlpReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await start_gateway()
    run = Cli(gw, capsys)
    code, _, err = await run(
        "otel", "set", "--traces-enabled", "true", "--traces-endpoint", http_rx.traces_url
    )
    assert code == 0, err
    code, _, err = await run("otel", "set", "--traces-enabled", "false")
    assert (code, err) == (0, "")
    assert (await get_config(gw)).config.traces.enabled is False


async def test_otel_test_exits_0_on_success_and_1_on_401(
    start_gateway: StartGateway, http_rx: HttpOtlpReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await start_gateway()
    run = Cli(gw, capsys)
    code, out, err = await run("otel", "test", "--metrics-endpoint", http_rx.metrics_url)
    assert (code, err) == (0, ""), err
    result = json.loads(out)
    assert result["metrics"]["success"] is True
    assert "traces" not in result  # only the section the flags touched is tested
    assert [r.path for r in http_rx.requests] == ["/v1/metrics"]

    http_rx.respond_with(401, "invalid API key")
    code, out, err = await run(
        "otel", "test", "--metrics-endpoint", http_rx.metrics_url, "--metrics-timeout", "2s"
    )
    assert code == 1
    result = json.loads(out)
    assert result["metrics"].get("success", False) is False
    assert result["metrics"]["reason"] == "http_4xx"
    assert result["metrics"]["httpStatus"] == 401
    assert "invalid API key" in result["metrics"]["message"]
    # Testing saves nothing.
    got = await get_config(gw)
    assert got.version == 0
    assert got.config.metrics.endpoint == ""


async def test_cli_sends_the_admin_token_from_the_environment(
    gateway_factory: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = await gateway_factory(env={"AIGW_ADMIN_TOKEN": "cli-t0ken"})
    run = Cli(gw, capsys)
    code, _, err = await run("otel", "get")
    assert code == 1
    assert "UNAUTHENTICATED" in err
    monkeypatch.setenv("AIGW_ADMIN_TOKEN", "wrong")
    code, _, err = await run("traces", "list")
    assert code == 1
    assert "UNAUTHENTICATED" in err
    monkeypatch.setenv("AIGW_ADMIN_TOKEN", "cli-t0ken")
    code, out, err = await run("otel", "get")
    assert (code, err) == (0, "")
    assert "config" in json.loads(out)


# --- traces -----------------------------------------------------------------------------------


async def test_traces_list_and_show(
    start_gateway: StartGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await start_gateway()
    await complete(gw, TRACE_A, TRACE_B, text="cli test")
    await flush_spans(gw)
    run = Cli(gw, capsys)

    code, out, err = await run("traces", "list", "--model", "echo")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[0] == "trace_id"
    listed = [line.split()[0] for line in lines[1:]]
    assert listed[:2] == [TRACE_B, TRACE_A]  # newest first
    assert all(" OK " in line and line.rstrip().endswith("echo") for line in lines[1:3])

    code, out, err = await run("traces", "list", "--json", "--limit", "1", "--model", "echo")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert [t["traceId"] for t in doc["traces"]] == [TRACE_B]
    assert doc["nextPageToken"]

    code, out, err = await run("traces", "show", TRACE_A)
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"trace {TRACE_A}"
    assert "aigw.v1.Completion/Complete (SERVER) [OK]" in out
    assert "  chat echo-1 (CLIENT)" in out  # indented under the server span
    assert out.index("aigw.v1.Completion/Complete") < out.index("chat echo-1")

    code, out, err = await run("traces", "show", "f" * 32)
    assert code == 1
    assert "NOT_FOUND" in err
    code, out, err = await run("traces", "show", "not-a-trace-id")
    assert code == 1
    assert "INVALID_ARGUMENT" in err


# --- units ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1.5m", 90.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        (" 30s ", 30.0),
        ("0s", 0.0),
        ("0.5ms", 0.0005),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert cli.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "-5s", "5 s", "5sec", "5S", "1e3s", ".5s", "5s5"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_duration(text)


BASE_S = 1_700_000_000


def _span(
    name: str,
    span_id: str,
    parent: str,
    start_ms: float,
    end_ms: float,
    kind: str = "INTERNAL",
    status: str = "UNSET",
    message: str = "",
    **attributes: str,
) -> traces_pb2.Span:
    def ts(ms: float) -> timestamp_pb2.Timestamp:
        return timestamp_pb2.Timestamp(seconds=BASE_S, nanos=round(ms * 1_000_000))

    attrs = struct_pb2.Struct()
    attrs.update(attributes)
    return traces_pb2.Span(
        name=name,
        span_id=span_id,
        parent_span_id=parent,
        kind=kind,
        attributes=attrs,
        status=traces_pb2.SpanStatus(code=status, message=message),
        start_time=ts(start_ms),
        end_time=ts(end_ms),
    )


def test_render_waterfall_draws_a_tree_on_one_time_axis() -> None:
    root = _span(
        "aigw.v1.Completion/Complete",
        "a" * 16,
        "",
        0,
        100,
        kind="SERVER",
        **{"rpc.response.status_code": "OK"},
    )
    child = _span("chat echo-1", "b" * 16, "a" * 16, 10, 90, "CLIENT", "ERROR", "boom")
    grandchild = _span("db", "c" * 16, "b" * 16, 20, 30)
    orphan = _span("stray", "d" * 16, "f" * 16, 50, 60)  # parent not in the trace: a root
    # Input order must not matter: spans are placed by start time.
    text = cli.render_waterfall([orphan, grandchild, root, child], width=40)
    lines = text.splitlines()
    assert len(lines) == 5
    assert lines[0].split() == ["offset", "duration", "span"]
    assert (
        lines[1] == f"    0.00ms   100.00ms  {'█' * 40}  aigw.v1.Completion/Complete (SERVER) [OK]"
    )
    assert lines[2] == (
        f"   10.00ms    80.00ms  {' ' * 4}{'█' * 32}{' ' * 4}    chat echo-1 (CLIENT)  ERROR boom"
    )
    assert lines[3] == f"   20.00ms    10.00ms  {' ' * 8}{'█' * 4}{' ' * 28}      db (INTERNAL)"
    assert lines[4] == f"   50.00ms    10.00ms  {' ' * 20}{'█' * 4}{' ' * 16}  stray (INTERNAL)"


def test_render_waterfall_edge_cases() -> None:
    assert cli.render_waterfall([]) == "(no spans)"
    # A zero-length trace still draws a one-cell bar and does not divide by zero.
    lines = cli.render_waterfall([_span("instant", "e" * 16, "", 5, 5)], width=10).splitlines()
    assert lines[1] == f"    0.00ms     0.00ms  █{' ' * 9}  instant (INTERNAL)"
