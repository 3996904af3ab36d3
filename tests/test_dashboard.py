"""The shipped Grafana dashboard queries only metrics and labels the gateway exposes."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

import grpc
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc, otel_config_pb2
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import RouteConfig
from tests.conftest import GatewayFactory, chat
from tests.otlp_receivers import HttpOtlpReceiver

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"
_PROMQL_WORDS = {
    "sum",
    "rate",
    "increase",
    "histogram_quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "label_values",
    "le",
    "and",
    "or",
    "unless",
}


def _queries(dashboard: dict) -> list[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return queries


def _metric_names(expr: str) -> set[str]:
    if match := re.fullmatch(r"label_values\((\w+), *(\w+)\)", expr):
        return {match.group(1)}
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values are not names
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # nor are label matchers
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)  # nor range durations
    expr = re.sub(r"by \([^)]*\)", "", expr)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {n for n in names if n not in _PROMQL_WORDS and not n.startswith("$")}


def _label_names(expr: str) -> set[str]:
    if match := re.fullmatch(r"label_values\((\w+), *(\w+)\)", expr):
        return {match.group(2)}
    labels = set()
    for group in re.findall(r"by \(([^)]*)\)", expr):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!=|!~|=)", matchers))
    return labels - {"le"}


async def test_every_metric_and_label_the_dashboard_uses_is_exposed(
    gateway_factory: GatewayFactory,
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = _queries(dashboard)
    assert len(queries) >= 12
    priced = RouteConfig(
        name="echo",
        provider="echo",
        model="echo-1",
        price_input_per_mtok=1.0,
        price_output_per_mtok=1.0,
    )
    with HttpOtlpReceiver() as receiver:
        gw = await gateway_factory(routes={"echo": priced})
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            await admin.SetOtelConfig(
                admin_pb2.SetOtelConfigRequest(
                    config=otel_config_pb2.OtelConfig(
                        traces=otel_config_pb2.ExporterConfig(
                            enabled=True, endpoint=receiver.traces_url
                        ),
                        metrics=otel_config_pb2.ExporterConfig(
                            enabled=True, endpoint=receiver.metrics_url
                        ),
                    )
                ),
                timeout=10,
            )
            completion = completion_pb2_grpc.CompletionStub(ch)
            await completion.Complete(chat("a b c"), timeout=5)
            _ = [c async for c in completion.StreamComplete(chat("a b c"), timeout=5)]
            assert gw.telemetry is not None
            await asyncio.to_thread(gw.telemetry.force_flush, 5)
            await asyncio.to_thread(gw.telemetry.flush_metrics, 5)
            url = f"http://127.0.0.1:{gw.metrics_port}/metrics"
            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(url, timeout=5).read().decode()
            )
        await gw.stop(grace=0.5)
    exposed: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exposed.setdefault(sample.name, set()).update(sample.labels)
    for query in queries:
        names = _metric_names(query)
        assert names, query
        for name in names:
            assert name in exposed, f"{name} (in {query!r}) is not in /metrics"
            missing = _label_names(query) - exposed[name]
            # Labels such as error_type exist only on some series of a metric.
            optional = {"error_type", "reason"}
            assert not (missing - optional), f"{name} lacks labels {missing} used in {query!r}"
