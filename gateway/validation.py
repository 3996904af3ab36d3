"""Validation of Completion requests: every problem is INVALID_ARGUMENT naming its field.

Limits protect the gateway and its upstreams from requests no model would accept anyway; they
are checked before any routing, so a bad request costs nothing upstream.
"""

from __future__ import annotations

import math
import re

from aigw.v1 import completion_pb2

from gateway.chat import ChatMessage
from gateway.errors import InvalidRequest

__all__ = ["ROLES", "validate_request"]

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_MESSAGES = 4096
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_METADATA = 16
MAX_METADATA_VALUE_CHARS = 256
MAX_MODEL_CHARS = 256
_METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def validate_request(
    request: completion_pb2.CompleteRequest,
) -> tuple[ChatMessage, ...]:
    """Raise InvalidRequest on the first problem; answer the messages as chat types."""
    if not request.model:
        raise InvalidRequest("model", 'required; name a route (e.g. "echo")')
    if len(request.model) > MAX_MODEL_CHARS or "\x00" in request.model:
        raise InvalidRequest("model", f"must be at most {MAX_MODEL_CHARS} characters, no NUL")
    if not request.messages:
        raise InvalidRequest("messages", "at least one message is required")
    if len(request.messages) > MAX_MESSAGES:
        raise InvalidRequest("messages", f"at most {MAX_MESSAGES} messages")
    messages = []
    for i, m in enumerate(request.messages):
        if m.role not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role",
                f"unknown role {m.role[:64]!r}; expected one of {', '.join(ROLES)}",
            )
        messages.append(ChatMessage(m.role, m.content))
    if request.HasField("max_tokens") and request.max_tokens < 1:
        raise InvalidRequest("max_tokens", f"must be at least 1, got {request.max_tokens}")
    if request.HasField("temperature"):
        t = request.temperature
        if not (math.isfinite(t) and 0.0 <= t <= 2.0):
            raise InvalidRequest("temperature", f"must be between 0 and 2, got {t}")
    if request.HasField("top_p"):
        p = request.top_p
        if not (math.isfinite(p) and 0.0 < p <= 1.0):
            raise InvalidRequest("top_p", f"must be greater than 0 and at most 1, got {p}")
    if len(request.stop) > MAX_STOP:
        raise InvalidRequest("stop", f"at most {MAX_STOP} sequences, got {len(request.stop)}")
    for i, s in enumerate(request.stop):
        if not s or len(s) > MAX_STOP_CHARS:
            raise InvalidRequest(f"stop[{i}]", f"must be 1-{MAX_STOP_CHARS} characters")
    if len(request.metadata) > MAX_METADATA:
        raise InvalidRequest("metadata", f"at most {MAX_METADATA} entries")
    for key, value in request.metadata.items():
        if not _METADATA_KEY.fullmatch(key):
            raise InvalidRequest(
                f"metadata[{key[:64]!r}]", "keys must be 1-64 characters of A-Z a-z 0-9 _ . -"
            )
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise InvalidRequest(
                f"metadata[{key!r}]",
                f"values must be at most {MAX_METADATA_VALUE_CHARS} characters",
            )
    return tuple(messages)
