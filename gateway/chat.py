"""Provider-neutral chat types: what the servicer hands a provider and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ChatChunk", "ChatMessage", "ChatRequest", "ChatResult"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    """A validated request, already resolved to its upstream model."""

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()


@dataclass(slots=True, kw_only=True)
class ChatResult:
    id: str
    model: str
    content: str
    finish_reason: str
    input_tokens: int
    output_tokens: int


@dataclass(slots=True, kw_only=True)
class ChatChunk:
    """One streamed piece: text deltas first, then a final chunk with finish_reason and usage.

    `id` and `model` are those of the upstream's answer and may only be known from its first
    chunk on; providers repeat them on every chunk.
    """

    id: str
    model: str
    delta: str = ""
    finish_reason: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def is_final(self) -> bool:
        return bool(self.finish_reason)
