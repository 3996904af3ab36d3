"""Secrets never reach the logs, whoever logs them — and the rest of the line survives.

Exporter secrets (header values, endpoint query values, TLS client keys — registered by each
exporter for as long as it lives, `otlp_exporters`) and provider API keys are known to the
gateway; backends and upstreams sometimes echo them in error messages, and libraries we do not
own (the OTLP exporters, httpx, urllib3) log those messages verbatim. One process-wide filter,
on every handler of the root logger and on the libraries' own loggers, rewrites any record that
contains a known secret before it is formatted — message, arguments and traceback alike.
Export error messages shown in health and `TestOtelConfig` go through the same `redact`.

The rule (one place, used by the filter and by export messages):

* **What is a secret.** Every value given to us as one (a header value, an endpoint's query
  value, an API key, each base64 line of an exporter's TLS private key), and every piece of it
  split at whitespace, ``,``, ``;`` or ``=`` (``"Bearer sk-abc…"`` → ``"sk-abc…"``, since
  backends echo the bare token) — but only if it is at least `MIN_SECRET_LENGTH` (8)
  characters long. Shorter values are not credentials (no API key or token is that short), and
  they are what shreds lines: a header ``x-mlflow-experiment-id: 1`` used to turn
  ``127.0.0.1`` into ``[REDACTED]27.0.0.[REDACTED]``. Such values are simply not registered.
  The JSON-escaped and URL-encoded forms of a secret count too, for backends that echo it
  inside a JSON body or a URL.
* **Where it is replaced.** Only where it stands as a whole token: an occurrence is redacted
  unless it continues a run of letters or digits on either side (``-``, ``_``, ``.``,
  quotes, spaces, ``=`` and the like are boundaries). So ``s3cret-key-42`` is redacted in
  ``key=s3cret-key-42;`` and ``'Bearer s3cret-key-42'`` but a registered ``12345678`` does not
  bite into ``1234567890``. Longest secrets first, so a piece never pre-empts the whole value.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import re
import threading
import traceback
import urllib.parse
from collections.abc import Iterable
from typing import Final

__all__ = [
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "REDACTOR",
    "SecretRedactor",
    "install",
    "redact",
    "secret_needles",
]

REDACTED: Final[str] = "[REDACTED]"
MIN_SECRET_LENGTH: Final[int] = 8
_SPLIT: Final[re.Pattern[str]] = re.compile(r"[\s,;=]+")
# A letter or digit (any script): the characters a secret must not be cut out of.
_ALNUM: Final[str] = r"[^\W_]"
_LIBRARY_LOGGERS = (
    "opentelemetry",
    "httpx",
    "httpcore",
    "grpc",
    "urllib3",
    "requests",
    "psycopg",
    "aiohttp",
)


def secret_needles(values: Iterable[str]) -> frozenset[str]:
    """The strings to redact for `values`, each given as a secret (see the module docstring)."""
    pieces: set[str] = set()
    for value in values:
        value = value.strip()
        pieces.add(value)
        pieces.update(_SPLIT.split(value))
    needles: set[str] = set()
    for piece in pieces:
        if len(piece) < MIN_SECRET_LENGTH:
            continue
        needles.add(piece)
        needles.add(json.dumps(piece, ensure_ascii=False)[1:-1])
        needles.add(urllib.parse.quote(piece, safe=""))
    return frozenset(needles)


@functools.lru_cache(maxsize=128)
def _pattern(needles: frozenset[str]) -> re.Pattern[str] | None:
    if not needles:
        return None
    alternatives = []
    for needle in sorted(needles, key=lambda n: (-len(n), n)):
        before = f"(?<!{_ALNUM})" if needle[0].isalnum() else ""
        after = f"(?!{_ALNUM})" if needle[-1].isalnum() else ""
        alternatives.append(f"{before}{re.escape(needle)}{after}")
    return re.compile("|".join(alternatives))


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret in `secrets` (raw values, the rule applied here) replaced."""
    return _redact_needles(text, secret_needles(secrets))


def _redact_needles(text: str, needles: frozenset[str]) -> str:
    pattern = _pattern(needles)
    return text if pattern is None else pattern.sub(REDACTED, text)


class SecretRedactor(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._by_owner: dict[str, frozenset[str]] = {}
        self._needles: frozenset[str] = frozenset()
        # Owners gone (see `forget_later`), dropped at the next change.
        self._forgotten: collections.deque[str] = collections.deque()

    def set_secrets(self, owner: str, secrets: Iterable[str]) -> None:
        """Replace the secrets `owner` (an exporter, a router) knows of; none forgets it."""
        needles = secret_needles(secrets)
        with self._lock:
            while self._forgotten:
                self._by_owner.pop(self._forgotten.popleft(), None)
            if needles:
                self._by_owner[owner] = needles
            else:
                self._by_owner.pop(owner, None)
            self._needles = frozenset().union(*self._by_owner.values())

    def forget_later(self, owner: str) -> None:
        """Forget `owner`'s secrets at the next change. For a garbage-collection finalizer:
        it may run inside `set_secrets` on the same thread (any allocation can collect), where
        taking the lock again would deadlock — so it only queues (a deque append needs no
        lock). Until then the secrets stay redacted, which costs nothing but a little time."""
        self._forgotten.append(owner)

    def filter(self, record: logging.LogRecord) -> bool:
        needles = self._needles
        if not needles:
            return True
        message = record.getMessage()
        redacted = _redact_needles(message, needles)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = _redact_needles(text, needles).rstrip("\n")
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
