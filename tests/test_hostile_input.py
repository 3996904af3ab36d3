"""Property tests: random and hostile input to every RPC gets a clear, documented status.

Never UNKNOWN or INTERNAL, an INVALID_ARGUMENT always names its field, and the gateway keeps
serving. Endpoints are drawn so that any that validate point at 127.0.0.1 (closed ports): a
property test must not send traffic anywhere else.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import grpc
import pytest
from aigw.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    completion_pb2,
    completion_pb2_grpc,
    otel_config_pb2,
    traces_pb2,
)
from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.processes import start_gateway_process, stop_process

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
COMPLETION_FIELDS = re.compile(r"^(model|messages|max_tokens|temperature|top_p|stop|metadata)\b")
CONFIG_FIELDS = re.compile(
    r"^(traces|metrics)\.(protocol|endpoint|encoding|headers|timeout|compression|export_interval|temporality|enabled)\b"
)
_T = TypeVar("_T")
PROPERTY = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One gateway process for the module, run by start_gateway_process on an event loop of its
    own (the property tests are synchronous), which keeps draining its log."""
    state = tmp_path_factory.mktemp("hostile")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="hostile-gateway", daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    proc, port, _ = run(start_gateway_process(state_dir=state))
    try:
        yield f"127.0.0.1:{port}"

        async def stopped() -> int:
            proc.terminate()
            code = await asyncio.wait_for(proc.wait(), 20)
            await stop_process(proc)  # joins the log drain
            return code

        assert run(stopped()) == 0
    finally:
        run(stop_process(proc))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()
    log = "".join(proc.log_lines)  # type: ignore[attr-defined]
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address) as ch:
        yield ch


def _call(fn: Callable[..., Any], request: Any) -> tuple[grpc.StatusCode, str]:
    try:
        fn(request, timeout=10)
    except grpc.RpcError as e:
        code, details = e.code(), e.details()  # type: ignore[attr-defined]
    else:
        return grpc.StatusCode.OK, ""
    assert code in ALLOWED, (code, details)
    return code, details


text = st.text(max_size=300)
huge = st.builds(
    lambda piece, n: piece * n,
    st.sampled_from(["a", "\x00", "é", "ab\r\n"]),
    st.integers(3000, 20000),
)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "", "wizard", "USER"])
messages = st.lists(
    st.builds(completion_pb2.Message, role=roles | text, content=text | huge), max_size=5
)


@st.composite
def completion_requests(draw: st.DrawFn) -> completion_pb2.CompleteRequest:
    request = completion_pb2.CompleteRequest(
        model=draw(st.sampled_from(["echo", "", "nope", "echo\x00"]) | text),
        messages=draw(messages),
        stop=draw(st.lists(text, max_size=6)),
        metadata=draw(st.dictionaries(text, text | huge, max_size=20)),
    )
    if draw(st.booleans()):
        request.max_tokens = draw(st.integers(-(2**31), 2**31 - 1))
    if draw(st.booleans()):
        request.temperature = draw(st.floats(allow_nan=True, allow_infinity=True))
    if draw(st.booleans()):
        request.top_p = draw(st.floats(allow_nan=True, allow_infinity=True))
    return request


@PROPERTY
@given(request=completion_requests())
def test_completion_answers_every_input_with_a_documented_code(
    channel: grpc.Channel, request: completion_pb2.CompleteRequest
) -> None:
    stub = completion_pb2_grpc.CompletionStub(channel)
    for call in (stub.Complete, lambda r, timeout: list(stub.StreamComplete(r, timeout=timeout))):
        code, details = _call(call, request)
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            assert COMPLETION_FIELDS.match(details), details


CLOSED = _closed_port()
endpoints = st.sampled_from(
    [
        "",
        f"http://127.0.0.1:{CLOSED}/v1/traces",
        f"http://127.0.0.1:{CLOSED}",
        f"https://127.0.0.1:{CLOSED}",
        "127.0.0.1:4317",
        "http://",
        "ftp://127.0.0.1/x",
        "http://127.0.0.1:99999/v1/traces",
        "http://127.0.0.1:0/v1/traces",
        "http://user:pw@127.0.0.1:1/v1/traces",
        "http://127.0.0.1:1/v1/traces\r\nx: y",
        "http://[::1",
        "http:// 127.0.0.1/",
    ]
) | st.text(max_size=100).filter(lambda s: "://" not in s)
header_names = (
    st.sampled_from(["authorization", "X-Key", "bad name", "a\r\nb", "", "grpc-x", "k-bin", "é"])
    | text
)
header_values = st.sampled_from(["v", "a\r\nb", "\x00", "********", "ü"]) | text
durations = st.builds(
    duration_pb2.Duration,
    seconds=st.integers(-(10**6), 10**6),
    nanos=st.integers(-(10**9) + 1, 10**9 - 1),
)


@st.composite
def exporter_configs(draw: st.DrawFn) -> otel_config_pb2.ExporterConfig:
    pb = otel_config_pb2.ExporterConfig(
        enabled=draw(st.booleans()),
        protocol=draw(st.integers(-2, 5)),
        endpoint=draw(endpoints),
        encoding=draw(st.integers(-2, 5)),
        headers=draw(st.dictionaries(header_names, header_values, max_size=4)),
        compression=draw(st.integers(-1, 4)),
        temporality=draw(st.integers(-1, 4)),
    )
    if draw(st.booleans()):
        pb.timeout.CopyFrom(draw(durations))
    if draw(st.booleans()):
        pb.export_interval.CopyFrom(draw(durations))
    return pb


@st.composite
def otel_configs(draw: st.DrawFn) -> otel_config_pb2.OtelConfig:
    config = otel_config_pb2.OtelConfig()
    if draw(st.booleans()):
        config.traces.CopyFrom(draw(exporter_configs()))
    if draw(st.booleans()):
        config.metrics.CopyFrom(draw(exporter_configs()))
    return config


@PROPERTY
@given(config=otel_configs(), expected=st.none() | st.integers(0, 2**64 - 1))
def test_set_otel_config_answers_every_input_with_a_documented_code(
    channel: grpc.Channel, config: otel_config_pb2.OtelConfig, expected: int | None
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    before = admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=10)
    request = admin_pb2.SetOtelConfigRequest(config=config)
    if expected is not None:
        request.expected_version = expected
    code, details = _call(admin.SetOtelConfig, request)
    after = admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=10)
    if code is grpc.StatusCode.OK:
        assert after.version == before.version + 1
    else:
        # A rejected Set changes nothing.
        assert (after.config, after.version) == (before.config, before.version)
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            assert CONFIG_FIELDS.match(details), details
        else:
            assert code is grpc.StatusCode.FAILED_PRECONDITION
            assert details.startswith("expected_version")
    # Every stored value comes back masked; and no value long enough to be a secret (the
    # redaction threshold) appears anywhere else in the answer. Shorter ones ("vers") can
    # occur in field names by chance.
    for section in (after.config.traces, after.config.metrics):
        assert set(section.headers.values()) <= {"********"}
    for value in config.traces.headers.values():
        if len(value) >= 8 and value != "********":
            assert value not in str(after), "a header value came back"


@PROPERTY
@given(config=otel_configs())
def test_test_otel_config_answers_every_input_with_a_documented_code(
    channel: grpc.Channel, config: otel_config_pb2.OtelConfig
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    code, details = _call(admin.TestOtelConfig, admin_pb2.TestOtelConfigRequest(config=config))
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        assert re.match(r"^(traces|metrics|config)\b", details), details


timestamps = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.integers(-62135596800, 253402300799),
    nanos=st.integers(0, 999_999_999),
)


@PROPERTY
@given(
    model=text,
    status=st.integers(-3, 6),
    page_size=st.integers(0, 2**32 - 1),
    page_token=st.sampled_from(["", "abc", "AAAA", "!!"]) | text,
    start_min=st.none() | timestamps,
    start_max=st.none() | timestamps,
    min_duration=st.none() | durations,
    trace_id=st.sampled_from(["", "0" * 32, "G" * 32, "a" * 31, "A" * 32]) | text,
)
def test_trace_queries_answer_every_input_with_a_documented_code(
    channel: grpc.Channel,
    model: str,
    status: int,
    page_size: int,
    page_token: str,
    start_min: timestamp_pb2.Timestamp | None,
    start_max: timestamp_pb2.Timestamp | None,
    min_duration: duration_pb2.Duration | None,
    trace_id: str,
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    request = admin_pb2.ListTracesRequest(
        model=model, status=status, page_size=page_size, page_token=page_token
    )
    if start_min is not None:
        request.start_time_min.CopyFrom(start_min)
    if start_max is not None:
        request.start_time_max.CopyFrom(start_max)
    if min_duration is not None:
        request.min_duration.CopyFrom(min_duration)
    code, details = _call(admin.ListTraces, request)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        assert re.match(r"^(status|page_size|page_token|min_duration|start_time)", details), details
    code, details = _call(admin.GetTrace, admin_pb2.GetTraceRequest(trace_id=trace_id))
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert details.startswith("trace_id:"), details
    assert traces_pb2.TRACE_STATUS_FILTER_ERROR  # the enum is what the filter speaks
