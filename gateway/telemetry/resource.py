"""The OpenTelemetry resource that names this gateway process on every span and metric."""

from __future__ import annotations

import os
import uuid

from opentelemetry.sdk.resources import Resource

from gateway import __version__

__all__ = ["build_resource"]


def build_resource() -> Resource:
    """service.name `aigw` unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names one.

    `Resource.create` merges the standard variables, but the attributes passed to it win, so
    the default name is passed only when neither variable sets one.
    """
    attributes: dict[str, str] = {
        "service.version": __version__,
        # One id per process: replicas of one service stay distinct series and traces.
        "service.instance.id": str(uuid.uuid4()),
    }
    from_env = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    env_keys = {pair.partition("=")[0].strip() for pair in from_env.split(",")}
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name" not in env_keys:
        attributes["service.name"] = "aigw"
    return Resource.create(attributes)
