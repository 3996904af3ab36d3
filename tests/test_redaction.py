"""Log redaction keeps secrets out without shredding the rest of the line.

The rule (gateway/redaction.py): values of at least 8 characters, and their whitespace/``,;=``
pieces, are secrets; they are replaced only where they stand as whole tokens. A header
``x-mlflow-experiment-id: 1`` once turned ``127.0.0.1`` into ``[REDACTED]27.0.0.[REDACTED]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Iterator

import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc, otel_config_pb2
from google.protobuf import duration_pb2

from gateway.redaction import REDACTED, REDACTOR, SecretRedactor, redact, secret_needles
from gateway.server import Gateway
from tests.conftest import chat
from tests.otlp_receivers import refusing_endpoint

API_KEY = "sk-live-7Hq2xR9vL0pW4mZ8"


@pytest.fixture
def redacted_logger() -> Iterator[tuple[logging.Logger, SecretRedactor]]:
    redactor = SecretRedactor()
    logger = logging.getLogger("tests.redaction")
    logger.addFilter(redactor)
    try:
        yield logger, redactor
    finally:
        logger.removeFilter(redactor)


def test_a_real_key_is_redacted_from_a_log_record_its_args_and_traceback(
    redacted_logger: tuple[logging.Logger, SecretRedactor], caplog: pytest.LogCaptureFixture
) -> None:
    logger, redactor = redacted_logger
    redactor.set_secrets("exporter", [f"Bearer {API_KEY}", "1", "gzip"])
    with caplog.at_level(logging.DEBUG, logger="tests.redaction"):
        logger.warning("upstream said: %s", f"invalid key 'Bearer {API_KEY}' for 127.0.0.1")
        try:
            raise ValueError(f"rejected {API_KEY}")
        except ValueError:
            logger.exception("export to 127.0.0.1:4318 failed")
    assert API_KEY not in caplog.text
    assert (
        caplog.records[0].getMessage() == f"upstream said: invalid key '{REDACTED}' for 127.0.0.1"
    )
    assert f"rejected {REDACTED}" in caplog.text
    assert "127.0.0.1:4318" in caplog.text


def test_a_short_value_does_not_shred_an_address() -> None:
    line = "HTTPConnectionPool(host='127.0.0.1', port=4318): Max retries exceeded (gzip, 1 try)"
    assert redact(line, ["1", "gzip", "4318", "on", "abcdefg"]) == line
    assert secret_needles(["1", "gzip", "4318", "abcdefg", "  "]) == frozenset()


def test_secrets_are_replaced_on_token_boundaries_only() -> None:
    assert redact("id=12345678; next=1234567890", ["12345678"]) == f"id={REDACTED}; next=1234567890"
    assert redact("tok-s3cret-key-42.", ["s3cret-key-42"]) == f"tok-{REDACTED}."
    assert redact("xs3cret-key-42", ["s3cret-key-42"]) == "xs3cret-key-42"
    # The longest secret wins over a piece of it.
    assert redact(f"auth: Bearer {API_KEY}", [f"Bearer {API_KEY}"]) == f"auth: {REDACTED}"
    # The bare token, as backends echo "the key", and not the scheme word.
    assert redact(f"key {API_KEY} revoked; Bearer is fine", [f"Bearer {API_KEY}"]) == (
        f"key {REDACTED} revoked; Bearer is fine"
    )


def test_escaped_forms_of_a_secret_are_redacted() -> None:
    secret = 'p@ss"w0rd/with spaces'
    in_json = json.dumps({"error": f"bad password {secret}"})
    in_url = f"https://x.example/cb?password={urllib.parse.quote(secret, safe='')}&a=1"
    assert "w0rd" not in redact(in_json, [secret])
    assert redact(in_url, [secret]) == f"https://x.example/cb?password={REDACTED}&a=1"


async def test_a_short_header_value_leaves_the_export_error_intact(
    gateway: Gateway, channel: object, caplog: pytest.LogCaptureFixture
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    completion = completion_pb2_grpc.CompletionStub(channel)
    with refusing_endpoint() as url:
        headers = {"x-mlflow-experiment-id": "1", "authorization": f"Bearer {API_KEY}"}
        section = otel_config_pb2.ExporterConfig(
            endpoint=url, headers=headers, timeout=duration_pb2.Duration(nanos=500_000_000)
        )
        tested = await admin.TestOtelConfig(
            admin_pb2.TestOtelConfigRequest(config=otel_config_pb2.OtelConfig(traces=section)),
            timeout=20,
        )
        section.enabled = True
        await admin.SetOtelConfig(
            admin_pb2.SetOtelConfigRequest(config=otel_config_pb2.OtelConfig(traces=section)),
            timeout=10,
        )
        # As `gateway.redaction.install()` does for the process's handlers; the gateway has
        # registered the header values with REDACTOR.
        caplog.handler.addFilter(REDACTOR)
        try:
            with caplog.at_level(logging.INFO):
                await completion.Complete(chat("hi"), timeout=5)
                assert gateway.telemetry is not None
                assert await asyncio.to_thread(gateway.telemetry.force_flush, 10)
        finally:
            caplog.handler.removeFilter(REDACTOR)
        health = (await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)).health
    address = url.split("/")[2]
    assert tested.traces.message == f"connection refused ({address})"
    assert health.traces.last_error == f"connection_refused: connection refused ({address})"
    assert f"connection refused ({address})" in caplog.text
    assert REDACTED not in caplog.text
