"""What the AdminService OTLP config tests share: the secrets they hunt, the configs they set,
and the checks they repeat (the gRPC helpers are tests/clients.py, the receivers conftest's)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aigw.v1 import otel_config_pb2
from google.protobuf import duration_pb2, json_format, text_format
from google.protobuf.message import Message

from gateway.server import Gateway
from tests.otlp_receivers import HttpOtlpReceiver

E = otel_config_pb2.ExporterConfig
Cfg = otel_config_pb2.OtelConfig
StartGateway = Callable[..., Awaitable[Gateway]]


SECRET_AUTH = "Bearer s3cret-7f1c2a9e4b"
SECRET_AUTH_TOKEN = "s3cret-7f1c2a9e4b"  # what a backend echoing "the key" would print
SECRET_KEY = "k3y-90ab12cd34ef56"
SECRETS = (SECRET_AUTH, SECRET_AUTH_TOKEN, SECRET_KEY)
TRACE_ID = "5b8aa5a2d2c872e8321cf37308d69df2"


def dur(seconds: int = 0, nanos: int = 0) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


async def flush_spans(gw: Gateway) -> None:
    assert gw.telemetry is not None
    assert await asyncio.to_thread(gw.telemetry.force_flush, 5)


def assert_no_secret(message: Message | str, secrets: tuple[str, ...] = SECRETS) -> None:
    if isinstance(message, str):
        blobs = [message.encode()]
    else:
        blobs = [
            message.SerializeToString(),
            text_format.MessageToString(message).encode(),
            json_format.MessageToJson(message).encode(),
        ]
    for secret in secrets:
        for blob in blobs:
            assert secret.encode() not in blob, f"{secret!r} leaked: {blob[:400]!r}"


def received_headers(rx: HttpOtlpReceiver, path: str) -> list[dict[str, str]]:
    return [r.headers for r in rx.requests if r.path == path]


BASELINE = Cfg(
    traces=E(
        endpoint="http://127.0.0.1:4318/v1/traces",
        headers={"authorization": SECRET_AUTH},
        timeout=dur(2),
    ),
    metrics=E(
        endpoint="http://127.0.0.1:4318/v1/metrics",
        export_interval=dur(30),
        temporality=otel_config_pb2.TEMPORALITY_DELTA,
    ),
)
GRPC = otel_config_pb2.PROTOCOL_GRPC
HTTP_URL = "http://127.0.0.1:4318/v1/traces"
BAD_VALUE = "v4lue-never-echoed"


def traces_only(**fields: Any) -> otel_config_pb2.OtelConfig:
    return Cfg(traces=E(**fields))


def metrics_only(**fields: Any) -> otel_config_pb2.OtelConfig:
    return Cfg(metrics=E(**fields))
