"""Spans and metrics of real calls: shape, attributes, context propagation, /metrics."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.request

import grpc
import pytest
from aigw.v1 import completion_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import RouteConfig, TelemetryConfig
from gateway.server import Gateway
from tests.conftest import GatewayFactory, chat
from tests.openai_stub import Fault, OpenAIStub
from tests.span_capture import CapturedSpans, capture

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


async def finished(spans: CapturedSpans, n: int) -> tuple[ReadableSpan, ...]:
    """The spans once `n` have ended: an aborted call's status can reach the client a moment
    before the server's interceptor has ended its span."""
    async with asyncio.timeout(5):
        while len(spans.get_finished_spans()) < n:  # noqa: ASYNC110 - another thread's exporter
            await asyncio.sleep(0.01)
    return spans.get_finished_spans()


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind]


async def stub_for(gw: Gateway) -> tuple[grpc.aio.Channel, completion_pb2_grpc.CompletionStub]:
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}")
    return ch, completion_pb2_grpc.CompletionStub(ch)


async def test_unary_call_makes_a_server_span_and_a_genai_client_child(
    gateway: Gateway,
) -> None:
    spans = capture(gateway)
    ch, stub = await stub_for(gateway)
    async with ch:
        await stub.Complete(
            chat(
                "alpha beta gamma",
                max_tokens=50,
                temperature=0.5,
                top_p=0.9,
                metadata={"tenant": "acme"},
            ),
            timeout=5,
        )
    ended = await finished(spans, 2)
    [server] = by_kind(ended, SpanKind.SERVER)
    [client] = by_kind(ended, SpanKind.CLIENT)
    assert server.name == "aigw.v1.Completion/Complete"
    a = server.attributes
    assert a["rpc.system.name"] == "grpc"
    assert a["rpc.method"] == "aigw.v1.Completion/Complete"
    assert a["rpc.response.status_code"] == "OK"
    assert a["server.address"] == "127.0.0.1"
    assert a["server.port"] == gateway.port
    assert a["network.peer.address"] == "127.0.0.1"
    assert a["aigw.route"] == "echo"
    assert a["aigw.metadata.tenant"] == "acme"
    assert "error.type" not in a
    assert server.status.status_code is StatusCode.UNSET

    assert client.name == "chat echo-1"
    assert client.parent is not None
    assert client.parent.span_id == server.context.span_id
    c = client.attributes
    assert c["gen_ai.operation.name"] == "chat"
    assert c["gen_ai.provider.name"] == "echo"
    assert c["gen_ai.request.model"] == "echo-1"
    assert c["gen_ai.response.model"] == "echo-1"
    assert c["gen_ai.request.max_tokens"] == 50
    assert c["gen_ai.request.temperature"] == 0.5
    assert c["gen_ai.request.top_p"] == 0.9
    assert c["gen_ai.request.stream"] is False
    assert c["gen_ai.usage.input_tokens"] == 4
    assert c["gen_ai.usage.output_tokens"] == 3
    assert c["gen_ai.response.finish_reasons"] == ("stop",)
    assert str(c["gen_ai.response.id"]).startswith("echo-")
    # Content is opt-in: off by default.
    assert not any(k.startswith("gen_ai.input") or k.startswith("gen_ai.output") for k in c)


async def test_traceparent_from_the_client_is_continued(gateway: Gateway) -> None:
    spans = capture(gateway)
    ch, stub = await stub_for(gateway)
    async with ch:
        await stub.Complete(
            chat(), metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")], timeout=5
        )
    [server] = by_kind(spans.get_finished_spans(), SpanKind.SERVER)
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert server.parent.is_remote


async def test_errors_set_status_code_and_error_type(gateway: Gateway) -> None:
    spans = capture(gateway)
    ch, stub = await stub_for(gateway)
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Complete(chat(model="nope"), timeout=5)
    [server] = await finished(spans, 1)
    assert server.attributes["rpc.response.status_code"] == "NOT_FOUND"
    assert server.attributes["error.type"] == "NOT_FOUND"
    # A client's mistake is not a server error (RPC semantic conventions).
    assert server.status.status_code is StatusCode.UNSET


async def test_stream_records_time_to_first_chunk(gateway_factory: GatewayFactory) -> None:
    route = RouteConfig(name="echo", provider="echo", model="echo-1", latency_ms=30)
    gw = await gateway_factory(routes={"echo": route})
    spans = capture(gw)
    ch, stub = await stub_for(gw)
    async with ch:
        _ = [c async for c in stub.StreamComplete(chat("a b c"), timeout=5)]
    [client] = by_kind(spans.get_finished_spans(), SpanKind.CLIENT)
    assert client.attributes["gen_ai.request.stream"] is True
    assert client.attributes["gen_ai.response.time_to_first_chunk"] >= 0.03
    assert client.attributes["gen_ai.usage.output_tokens"] == 3


async def test_a_cancelled_stream_ends_both_spans_as_cancelled(
    gateway_factory: GatewayFactory,
) -> None:
    route = RouteConfig(name="echo", provider="echo", model="echo-1", token_delay_ms=200)
    gw = await gateway_factory(routes={"echo": route})
    spans = capture(gw)
    ch, stub = await stub_for(gw)
    async with ch:
        call = stub.StreamComplete(chat("a b c d e f g h"), timeout=10)
        assert (await call.read()).delta == "a"
        call.cancel()
        async with asyncio.timeout(5):
            while len(spans.get_finished_spans()) < 2:  # noqa: ASYNC110 - polling another thread's exporter
                await asyncio.sleep(0.02)
    [server] = by_kind(spans.get_finished_spans(), SpanKind.SERVER)
    [client] = by_kind(spans.get_finished_spans(), SpanKind.CLIENT)
    assert server.attributes["rpc.response.status_code"] == "CANCELLED"
    assert client.attributes["error.type"] == "cancelled"
    assert client.status.status_code is StatusCode.ERROR
    assert client.status.description == "cancelled by the client"


async def test_content_is_recorded_only_when_opted_in_and_capped(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(
        telemetry=TelemetryConfig(record_content=True, content_max_chars=100)
    )
    spans = capture(gw)
    ch, stub = await stub_for(gw)
    async with ch:
        await stub.Complete(chat("word " * 50), timeout=5)
    [client] = by_kind(spans.get_finished_spans(), SpanKind.CLIENT)
    recorded = client.attributes["gen_ai.input.messages"]
    # Capped, the value stays JSON of the conventions' shape: the text is cut and marked.
    assert recorded.startswith('[{"role": "user"')
    assert len(recorded) <= 100
    [message] = json.loads(recorded)
    text = message["parts"][0]["content"]
    assert text.endswith("…[truncated]")
    assert ("word " * 50).startswith(text.removesuffix("…[truncated]"))
    assert "gen_ai.output.messages" in client.attributes


def scrape(gw: Gateway) -> str:
    """/metrics once the calls made so far have been measured (records travel in batches)."""
    assert gw.telemetry is not None
    assert gw.telemetry.local.flush(5.0)
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5) as r:
        return r.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


async def test_metrics_count_calls_and_tokens_exactly(gateway_factory: GatewayFactory) -> None:
    priced = RouteConfig(
        name="echo",
        provider="echo",
        model="echo-1",
        price_input_per_mtok=1_000_000.0,
        price_output_per_mtok=2_000_000.0,
    )
    gw = await gateway_factory(routes={"echo": priced})
    ch, stub = await stub_for(gw)
    async with ch:
        for text in ("one", "one two", "one two three"):
            await stub.Complete(chat(text), timeout=5)
        _ = [c async for c in stub.StreamComplete(chat("a b c d"), timeout=5)]
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Complete(chat(model="nope"), timeout=5)
    # The NOT_FOUND call's status can reach us just before its duration is recorded.
    async with asyncio.timeout(5):
        while True:
            found = samples(await asyncio.to_thread(scrape, gw))
            if value(found, "rpc_server_call_duration_seconds_count") >= 5:
                break
            await asyncio.sleep(0.02)
    rpc = "rpc_server_call_duration_seconds_count"
    assert (
        value(found, rpc, rpc_method="aigw.v1.Completion/Complete", rpc_response_status_code="OK")
        == 3
    )
    assert value(found, rpc, rpc_method="aigw.v1.Completion/StreamComplete") == 1
    assert value(found, rpc, rpc_response_status_code="NOT_FOUND") == 1
    tokens = "gen_ai_client_token_usage_sum"
    # input: words + 1 per message; output: words.
    assert value(found, tokens, gen_ai_token_type="input") == (1 + 2 + 3 + 4) + 4
    assert value(found, tokens, gen_ai_token_type="output") == 1 + 2 + 3 + 4
    assert value(found, "gen_ai_server_request_duration_seconds_count", aigw_route="echo") == 4
    assert value(found, "gen_ai_server_time_to_first_token_seconds_count") == 1
    # $1 per input token and $2 per output token at these prices.
    assert value(found, "aigw_usage_cost_USD_total") == pytest.approx(14 * 1 + 10 * 2)
    assert value(found, "aigw_server_active_requests") == 0


async def test_metadata_labels_are_allow_listed_and_capped(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(
        telemetry=TelemetryConfig(metadata_labels=("tenant",), metadata_label_max_values=3)
    )
    ch, stub = await stub_for(gw)
    async with ch:
        for i in range(10):
            await stub.Complete(
                chat(metadata={"tenant": f"t{i}", "request_id": f"r{i}"}), timeout=5
            )
    text = await asyncio.to_thread(scrape, gw)
    found = samples(text)
    name = "gen_ai_server_request_duration_seconds_count"
    tenants = {dict(ls).get("metadata_tenant") for (n, ls) in found if n == name}
    assert tenants == {"t0", "t1", "t2", "other"}
    assert value(found, name, metadata_tenant="other") == 7
    assert "request_id" not in text
    assert "r5" not in text


# Label values that exposition escaping must get right: a quote, a backslash, a newline, and
# text beyond ASCII. Each is a tenant in the test below.
AWKWARD_TENANTS = ('acme "quoted"', "back\\slash", "two\nlines", "ünïcødé ✓ 租户")


async def test_the_whole_exposition_passes_promtool(
    gateway_factory: GatewayFactory, openai_stub: OpenAIStub
) -> None:
    """Every kind of series the gateway can expose, at once: a priced route (cost), RPC and
    upstream errors, streamed calls, metadata labels past their cap ("other"), and label values
    with quotes, backslashes, newlines and unicode. promtool must find nothing to say."""
    assert shutil.which("promtool"), "promtool missing: `make test` installs Debian's prometheus"
    routes = {
        "echo": RouteConfig(
            name="echo",
            provider="echo",
            model="echo-1",
            price_input_per_mtok=3.0,
            price_output_per_mtok=15.0,
        ),
        "gpt": RouteConfig(
            name="gpt",
            provider="openai",
            model="gpt-test",
            base_url=openai_stub.base_url,
            price_input_per_mtok=0.15,
            price_output_per_mtok=0.6,
        ),
    }
    # Cap 4: the awkward tenants take the 4 label values; "plain" and "more" become "other".
    gw = await gateway_factory(
        routes=routes,
        telemetry=TelemetryConfig(metadata_labels=("tenant",), metadata_label_max_values=4),
    )
    ch, stub = await stub_for(gw)
    async with ch:
        for tenant in (*AWKWARD_TENANTS, "plain", "more"):
            await stub.Complete(chat("a b c", metadata={"tenant": tenant}), timeout=5)
            _ = [
                c
                async for c in stub.StreamComplete(
                    chat("d e", model="gpt", metadata={"tenant": tenant}), timeout=5
                )
            ]
        for status in (429, 500):
            openai_stub.next_responses.append(Fault(status=status, message="no"))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Complete(chat(model="gpt"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Complete(chat(model="nope"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Complete(chat("x", max_tokens=0), timeout=5)
    async with asyncio.timeout(5):  # the last error's duration lands just after its status
        while True:
            text = await asyncio.to_thread(scrape, gw)
            found = samples(text)
            if value(found, "rpc_server_call_duration_seconds_count") >= 6 * 2 + 4:
                break
            await asyncio.sleep(0.02)

    # The exposition really has each kind of series promtool is to judge.
    assert value(found, "aigw_usage_cost_USD_total", aigw_route="echo") > 0
    assert value(found, "aigw_usage_cost_USD_total", aigw_route="gpt") > 0
    rpc = "rpc_server_call_duration_seconds_count"
    for code in ("NOT_FOUND", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE"):
        assert value(found, rpc, rpc_response_status_code=code) == 1, code
    genai = "gen_ai_server_request_duration_seconds_count"
    # An upstream HTTP error's error.type is its status.
    assert value(found, genai, aigw_route="gpt", error_type="429") == 1
    assert value(found, genai, aigw_route="gpt", error_type="500") == 1
    assert value(found, "gen_ai_server_time_to_first_token_seconds_count") == 6
    tenants = {
        dict(labels)["metadata_tenant"]
        for (name, labels) in found
        if name == genai and "metadata_tenant" in dict(labels)
    }
    # Parsed back, every awkward value is intact: escaping was right, not merely accepted.
    # ("": the error calls, which carried no tenant.)
    assert tenants == {*AWKWARD_TENANTS, "other", ""}, tenants
    assert value(found, genai, metadata_tenant="other") == 2 * 2  # 2 tenants x 2 calls
    assert 'metadata_tenant="acme \\"quoted\\""' in text
    assert 'metadata_tenant="two\\nlines"' in text
    assert 'metadata_tenant="back\\\\slash"' in text
    assert 'metadata_tenant="ünïcødé ✓ 租户"' in text

    result = await asyncio.to_thread(
        subprocess.run,
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout
    assert result.stderr.strip() == "", result.stderr
