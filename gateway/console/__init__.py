"""The operator console served on the side-port next to `/metrics` (see app.py)."""

from gateway.console.app import Console

__all__ = ["Console"]
