"""Secrets never reach the logs, whoever logs them.

Exporter header values and provider API keys are known to the gateway; backends and upstreams
sometimes echo them in error messages, and libraries we do not own (the OTLP exporters, httpx)
log those messages verbatim. One process-wide filter, on every handler of the root logger and
on the libraries' own loggers, rewrites any record that contains a known secret before it is
formatted — message, arguments and traceback alike.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Iterable

from gateway.telemetry.export_outcome import redact

__all__ = ["REDACTOR", "SecretRedactor", "install"]

# Values this short are not secrets worth garbling every log line for ("1", "on", "gzip").
_MIN_SECRET = 6
_LIBRARY_LOGGERS = (
    "opentelemetry",
    "httpx",
    "httpcore",
    "grpc",
    "urllib3",
    "requests",
)


class SecretRedactor(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._by_owner: dict[str, frozenset[str]] = {}
        self._secrets: tuple[str, ...] = ()

    def set_secrets(self, owner: str, secrets: Iterable[str]) -> None:
        """Replace the secrets `owner` (an exporter, a router) knows of."""
        with self._lock:
            self._by_owner[owner] = frozenset(s for s in secrets if len(s) >= _MIN_SECRET)
            self._secrets = tuple(set().union(*self._by_owner.values()))

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets
        if not secrets:
            return True
        message = record.getMessage()
        redacted = redact(message, secrets)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = redact(text, secrets).rstrip("\n")
            record.exc_info = None
        return True


REDACTOR = SecretRedactor()


def install() -> None:
    """Attach the filter where records from any logger pass; idempotent."""
    for handler in logging.getLogger().handlers:
        if REDACTOR not in handler.filters:
            handler.addFilter(REDACTOR)
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if REDACTOR not in logger.filters:
            logger.addFilter(REDACTOR)
