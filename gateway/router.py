"""Routes: a model name from the client → the route's config and its provider instance."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from gateway.config import RouteConfig
from gateway.errors import RouteNotFound
from gateway.providers import Provider, build_provider
from gateway.redaction import REDACTOR

__all__ = ["Router"]


class Router:
    def __init__(self, routes: Mapping[str, RouteConfig]) -> None:
        self._routes = dict(routes)
        self._providers: dict[str, Provider] = {
            name: build_provider(route) for name, route in self._routes.items()
        }
        # Keys are read per call from the environment; the values known now are redacted
        # from every log line, since upstreams echo rejected keys.
        REDACTOR.set_secrets(
            f"router-{id(self)}",
            [os.environ.get(r.api_key_env, "") for r in self._routes.values() if r.api_key_env],
        )

    @property
    def names(self) -> list[str]:
        return sorted(self._routes)

    def resolve(self, model: str) -> tuple[RouteConfig, Provider]:
        route = self._routes.get(model)
        if route is None:
            raise RouteNotFound(model, self.names)
        return route, self._providers[model]

    async def aclose(self) -> None:
        await asyncio.gather(*(p.aclose() for p in self._providers.values()))
