"""Builds the OTLP exporter for a protocol × encoding, each reporting its last `ExportOutcome`.

- HTTP + protobuf: the official exporters, handed a `requests.Session` that keeps the backend's
  last answer (status and body) or the transport error;
- gRPC: the official exporters, with their channel wrapped in an interceptor that keeps the
  last status code and details;
- HTTP + JSON: ours (`otlp_json`), since the released SDK has none.

The official exporters only say SUCCESS or FAILURE; operators need the backend's own words
("401 invalid API key") in `GetOtelConfig` health and `TestOtelConfig`, and the self-metrics
need a reason label. What each transport reports goes through `export_outcome`, the one
translation point, so a failure reads the same whatever the encoding; header values are
redacted from every message kept.

Three things the official HTTP exporter gets wrong for us are corrected in the session: it counts
any status below 400 as success, so a 3xx is turned into a failure there (it never follows
redirects: that would re-send our credentials wherever the backend points); it cannot be told
to try only once, which `single_attempt` exporters (the endpoint test) need; and it retries a
TLS failure, which never heals within one export's budget, until the budget is gone and the
verifier's words with it. The session does all three by raising after it recorded the outcome
— an error the exporter does not retry. The official exporters' own log lines (one WARNING or
ERROR per failed export or retry) are demoted to DEBUG: failures are logged once per state
change (`export_stats`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Final

import grpc
import requests
import urllib3.exceptions
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter

from gateway.redaction import REDACTOR
from gateway.telemetry.export_outcome import (
    ExportOutcome,
    demote_to_debug,
    endpoint_address,
    outcome_from_exception,
    outcome_from_grpc,
    outcome_from_response,
)
from gateway.telemetry.export_settings import ExporterSettings, TlsSettings
from gateway.telemetry.export_tls import (
    TlsAdapter,
    grpc_channel_options,
    grpc_credentials,
    ssl_context,
)
from gateway.telemetry.metric_export import temporality_preference
from gateway.telemetry.otlp_json import OTLPJsonMetricExporter, OTLPJsonSpanExporter

__all__ = ["build_metric_exporter", "build_span_exporter"]

_log = logging.getLogger(__name__)
_owners = itertools.count()


# The official exporters' loggers (their HTTP client logs through the exporter's logger).
_SDK_EXPORT_LOGGERS: Final[tuple[str, ...]] = (
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
)
for _name in _SDK_EXPORT_LOGGERS:
    demote_to_debug(_name)

# gRPC exporters built with `single_attempt`: no failure code is retryable.
_NOTHING_RETRYABLE: Final[frozenset[grpc.StatusCode]] = frozenset({grpc.StatusCode.OK})


class _Stop(Exception):
    """Raised by `_RecordingSession` to end an export now: the outcome is already recorded.

    Not a `requests` connection error, so the official exporter neither retries nor counts it
    a success."""


def _record(slot: threading.local, outcome: ExportOutcome) -> None:
    """Keep what one export's attempts came to: the latest attempt's outcome, except that a
    timeout does not replace an earlier failure of the same export that said more (a refused
    connection, a certificate the verifier rejected) — the exporters retry until the budget
    runs out, and the attempt cut short by it knows only that time was up. Each export starts
    with a clear slot (the recorded exporters' `export`)."""
    earlier: ExportOutcome | None = getattr(slot, "outcome", None)
    if (
        outcome.reason == "timeout"
        and earlier is not None
        and not earlier.success
        and earlier.reason != "timeout"
    ):
        return
    slot.outcome = outcome


class _RecordingSession(requests.Session):
    """Keeps the outcome of the last request made on this thread (see the module docstring)."""

    def __init__(
        self, secrets: tuple[str, ...], tls: TlsSettings, *, single_attempt: bool = False
    ) -> None:
        super().__init__()
        # All TLS decisions are the adapter's: see `export_tls.TlsAdapter`.
        self.mount("https://", TlsAdapter(tls))
        self._secrets = secrets
        self._single_attempt = single_attempt
        self._attempted = False
        self._last = threading.local()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if self._single_attempt and self._attempted:
            raise _Stop("only one attempt")  # the first attempt's outcome stands
        self._attempted = True
        kwargs["allow_redirects"] = False
        address = endpoint_address(url.decode() if isinstance(url, bytes) else url)
        try:
            response = super().request(method, url, *args, **kwargs)
        except Exception as e:
            outcome = outcome_from_exception(e, address=address, secrets=self._secrets)
            _record(self._last, outcome)
            if outcome.reason == "tls":
                # A certificate problem does not heal within the budget: retrying would only
                # turn the verifier's words into "timed out".
                raise _Stop("tls") from e
            raise
        outcome = outcome_from_response(response, secrets=self._secrets)
        _record(self._last, outcome)
        if not outcome.success and (outcome.reason == "http_3xx" or self._single_attempt):
            raise _Stop(outcome.reason)
        return response

    def take(self) -> ExportOutcome | None:
        outcome = getattr(self._last, "outcome", None)
        self._last.outcome = None
        return outcome


class _StatusRecorder(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, secrets: tuple[str, ...], address: str, *, tls: bool) -> None:
        self._secrets = secrets
        self._address = address
        self._tls = tls
        self._last = threading.local()

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        call = continuation(client_call_details, request)
        _record(
            self._last,
            outcome_from_grpc(
                call.code(),
                call.details() or "",
                address=self._address,
                secrets=self._secrets,
                tls=self._tls,
            ),
        )
        return call

    def take(self) -> ExportOutcome | None:
        outcome = getattr(self._last, "outcome", None)
        self._last.outcome = None
        return outcome


def _recorded_grpc(base: type) -> type:
    """A subclass of an official gRPC exporter whose channel records every status."""

    class Recorded(base):  # type: ignore[misc, valid-type]
        def __init__(self, *, recorder: _StatusRecorder, **kwargs: Any) -> None:
            self._recorder = recorder
            super().__init__(**kwargs)

        def _initialize_channel_and_stub(self) -> None:
            super()._initialize_channel_and_stub()
            # The exporter re-creates its channel after UNAVAILABLE; every channel is wrapped.
            self._client = self._stub(grpc.intercept_channel(self._channel, self._recorder))

        def export(self, *args: Any, **kwargs: Any) -> Any:
            self._recorder.take()  # what this export's attempts come to, nothing older
            return super().export(*args, **kwargs)

        @property
        def last_outcome(self) -> ExportOutcome | None:
            return self._recorder.take()

    Recorded.__name__ = Recorded.__qualname__ = f"Recorded{base.__name__}"
    return Recorded


_RecordedGrpcSpanExporter = _recorded_grpc(GrpcSpanExporter)
_RecordedGrpcMetricExporter = _recorded_grpc(GrpcMetricExporter)


def _recorded_http(base: type) -> type:
    class Recorded(base):  # type: ignore[misc, valid-type]
        def __init__(self, *, session: _RecordingSession, **kwargs: Any) -> None:
            self._recording_session = session
            super().__init__(session=session, **kwargs)

        def export(self, *args: Any, **kwargs: Any) -> Any:
            self._recording_session.take()  # what this export's attempts come to, nothing older
            return super().export(*args, **kwargs)

        @property
        def last_outcome(self) -> ExportOutcome | None:
            return self._recording_session.take()

    Recorded.__name__ = Recorded.__qualname__ = f"Recorded{base.__name__}"
    return Recorded


_RecordedHttpSpanExporter = _recorded_http(HttpSpanExporter)
_RecordedHttpMetricExporter = _recorded_http(HttpMetricExporter)


def _build(
    settings: ExporterSettings,
    grpc_cls: type,
    json_cls: type,
    http_cls: type,
    *,
    single_attempt: bool,
    **extra: Any,
) -> Any:
    secrets = settings.secrets
    # Registered before anything is built (a library's error while building must not log
    # them), and for as long as the exporter lives.
    owner = f"otlp-exporter-{next(_owners)}"
    REDACTOR.set_secrets(owner, secrets)
    try:
        exporter = _build_exporter(
            settings, secrets, grpc_cls, json_cls, http_cls, single_attempt, extra
        )
    except BaseException:
        REDACTOR.set_secrets(owner, ())
        raise
    weakref.finalize(exporter, REDACTOR.forget_later, owner)
    if settings.tls.insecure_skip_verify:
        # urllib3 would warn on every request; the one WARNING below (and Get) says it once.
        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        if not single_attempt:
            _log.warning(
                "OTLP export to %s does NOT verify the backend's certificate "
                "(tls.insecure_skip_verify): anyone on the path can read and change it",
                endpoint_address(settings.endpoint),
            )
    return exporter


def _build_exporter(
    settings: ExporterSettings,
    secrets: tuple[str, ...],
    grpc_cls: type,
    json_cls: type,
    http_cls: type,
    single_attempt: bool,
    extra: dict[str, Any],
) -> Any:
    gzip = settings.compression == "gzip"
    tls = settings.tls
    common = {
        "endpoint": settings.endpoint,
        "headers": settings.header_dict,
        "timeout": settings.timeout,
        **extra,
    }
    if settings.protocol == "grpc":
        compression = grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression
        if single_attempt:
            common["retryable_error_codes"] = _NOTHING_RETRYABLE
        https = settings.endpoint.lower().startswith("https://")
        recorder = _StatusRecorder(secrets, endpoint_address(settings.endpoint), tls=https)
        # The scheme decides, not OTEL_EXPORTER_OTLP_INSECURE; the credentials are ours, not
        # those the official exporter would build from OTEL_EXPORTER_OTLP_CERTIFICATE.
        if https:
            common["insecure"] = False
            common["credentials"] = grpc_credentials(tls)
            common["channel_options"] = grpc_channel_options(tls) or None
        else:
            common["insecure"] = True
        return grpc_cls(recorder=recorder, compression=compression, **common)
    if settings.encoding == "json":
        attempts = 1 if single_attempt else None
        return json_cls(
            compression=settings.compression,
            max_attempts=attempts,
            ssl_context=ssl_context(tls),
            server_name=tls.server_name,
            secrets=secrets,
            **common,
        )
    compression = HttpCompression.Gzip if gzip else HttpCompression.NoCompression
    session = _RecordingSession(secrets, tls, single_attempt=single_attempt)
    return http_cls(session=session, compression=compression, **common)


def build_span_exporter(
    settings: ExporterSettings, *, single_attempt: bool = False
) -> SpanExporter:
    """The span exporter `settings` describe; `single_attempt`: never retry (an endpoint test)."""
    return _build(
        settings,
        _RecordedGrpcSpanExporter,
        OTLPJsonSpanExporter,
        _RecordedHttpSpanExporter,
        single_attempt=single_attempt,
    )


def build_metric_exporter(
    settings: ExporterSettings, *, single_attempt: bool = False
) -> MetricExporter:
    """The metric exporter `settings` describe; `single_attempt`: never retry."""
    return _build(
        settings,
        _RecordedGrpcMetricExporter,
        OTLPJsonMetricExporter,
        _RecordedHttpMetricExporter,
        single_attempt=single_attempt,
        preferred_temporality=temporality_preference(settings.temporality),
    )
