"""The operator console on the side-port: routes, the admin gate and page rendering.

Every page and action goes through the control plane the AdminService uses — the same
`OtelConfigManager` (validation, masking, expected_version), the same trace store through
`TelemetryControl.traces`, the same `Replicas` and the same error mapping
(admin/control_views.py). Pages are Jinja2 templates with autoescaping on; the one script is
ours, served from /static, and the Content-Security-Policy allows nothing else.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from prometheus_client import CollectorRegistry

from admin.config_manager import OtelConfigManager
from admin.control_views import (
    CHANGE_ERRORS,
    READ_YOUR_WRITES_SECONDS,
    FleetUnavailable,
    change_failure,
    fleet_view,
    health_from_document,
)
from admin.otel_config import InvalidConfig
from admin.otel_proto import to_proto
from admin.replicas import Replicas
from gateway.console.drawing import draw_chart, draw_waterfall, fmt
from gateway.console.metric_ring import MetricRing
from gateway.console.sessions import COOKIE, Session, Sessions, csrf_matches, is_loopback_address
from gateway.console.settings_form import (
    SECTIONS,
    config_from_form,
    field_problems,
    forms_from_settings,
)
from gateway.metrics_http import SidePort
from gateway.telemetry.control import TelemetryControl
from gateway.telemetry.trace_store import MAX_PAGE_SIZE, TraceStoreUnavailable

__all__ = ["Console"]

# What the access check hands the handlers, per request.
_SESSION = web.RequestKey("session", Session)
_FORM = web.RequestKey("form", Any)
_NEW_SID = web.RequestKey("new_sid", str)

_HERE = Path(__file__).parent
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_OPEN_PATHS = ("/metrics", "/static/")
_PAGE_SIZE = 50
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _when(ns: int) -> str:
    if not ns:
        return "never"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _parse_time(text: str, name: str) -> int | None:
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name}: not a date and time (YYYY-MM-DDTHH:MM, UTC)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1e9)


def _safe_next(path: str) -> str:
    return path if path.startswith("/") and not path.startswith("//") else "/"


class Console:
    def __init__(
        self,
        telemetry: TelemetryControl,
        manager: OtelConfigManager,
        replicas: Replicas,
        registry: CollectorRegistry,
        admin_token: str,
        *,
        sample_interval: float = 5.0,
    ) -> None:
        self._telemetry = telemetry
        self._manager = manager
        self._replicas = replicas
        self.sessions = Sessions(admin_token)
        self.ring = MetricRing(registry, interval=sample_interval)
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.globals.update(when=_when, fmt=fmt, draw_chart=draw_chart)
        self._side_port: SidePort | None = None

    # --- wiring ----------------------------------------------------------------------------

    def install(self, app: web.Application, side_port: SidePort) -> None:
        self._side_port = side_port
        app.middlewares.append(self._gate)
        r = app.router
        r.add_static("/static/", _HERE / "static", append_version=False)
        r.add_get("/", self._home)
        r.add_get("/signin", self._signin_page)
        r.add_post("/signin", self._signin)
        r.add_post("/signout", self._signout)
        r.add_get("/settings", self._settings_page)
        r.add_post("/settings", self._settings_post)
        r.add_get("/traces", self._traces_page)
        r.add_get("/traces/{trace_id}", self._trace_page)
        r.add_get("/overview", self._overview_page)
        r.add_get("/overview/charts", self._overview_charts)
        r.add_get("/replicas", self._replicas_page)

        async def start_ring(app: web.Application) -> None:
            self.ring.start()

        async def stop_ring(app: web.Application) -> None:
            await self.ring.stop()

        app.on_startup.append(start_ring)
        app.on_cleanup.append(stop_ring)

    # --- the gate: admin only, CSRF on every POST ---------------------------------------------

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(_OPEN_PATHS):
            return await handler(request)
        response = await self._gated(request, handler)
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _gated(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.sessions.token_required:
            if not is_loopback_address(request.remote or ""):
                return self._refuse(
                    "The console accepts only loopback callers when AIGW_ADMIN_TOKEN is unset."
                )
            if request.path in ("/signin", "/signout"):
                raise web.HTTPSeeOther("/")
        elif request.path == "/signin":
            return await handler(request)
        sid = request.cookies.get(COOKIE)
        session = self.sessions.get(sid)
        if session is None and not self.sessions.token_required and request.method == "GET":
            sid, session = self.sessions.create(principal=request.remote or "")
            request[_NEW_SID] = sid
        if session is None:
            if request.method in ("GET", "HEAD"):
                target = request.path_qs
                raise web.HTTPSeeOther("/signin?" + urlencode({"next": target}))
            return self._refuse("Sign in first; nothing was changed.")
        request[_SESSION] = session
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"{request.scheme}://{request.host}":
                return self._refuse("Cross-site request refused; nothing was changed.")
            form = await self._read_body(request)
            request[_FORM] = form
            if not csrf_matches(session, str(form.get("csrf", ""))):
                return self._refuse("Missing or wrong CSRF token; nothing was changed.")
        response = await handler(request)
        if _NEW_SID in request:
            self._set_cookie(response, request[_NEW_SID])
        return response

    async def _read_body(self, request: web.Request) -> Any:
        assert self._side_port is not None, "not installed"
        return await self._side_port.read_body(request)

    def _refuse(self, message: str) -> web.Response:
        return web.Response(status=403, text=message + "\n", content_type="text/plain")

    def _set_cookie(self, response: web.StreamResponse, sid: str) -> None:
        response.set_cookie(
            COOKIE,
            sid,
            max_age=int(self.sessions.lifetime),
            path="/",
            httponly=True,
            samesite="Strict",
        )

    def _render(
        self, request: web.Request, template: str, status: int = 200, **ctx: Any
    ) -> web.Response:
        session: Session | None = request.get(_SESSION)
        text = self._env.get_template(template).render(
            csrf=session.csrf if session else "",
            signed_in=session is not None,
            token_required=self.sessions.token_required,
            path=request.path,
            **ctx,
        )
        return web.Response(status=status, text=text, content_type="text/html")

    # --- sign-in -------------------------------------------------------------------------------

    async def _home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/overview")

    async def _signin_page(self, request: web.Request) -> web.StreamResponse:
        nxt = _safe_next(request.query.get("next", "/"))
        return self._render(request, "signin.html", next=nxt, error="")

    async def _signin(self, request: web.Request) -> web.StreamResponse:
        form = await self._read_body(request)
        nxt = _safe_next(str(form.get("next", "/")))
        if not self.sessions.token_matches(str(form.get("token", ""))):
            await asyncio.sleep(0.2)  # a guess costs a little
            return self._render(
                request, "signin.html", status=401, next=nxt, error="That is not the admin token."
            )
        self.sessions.end(request.cookies.get(COOKIE))
        sid, _ = self.sessions.create()
        response = web.HTTPSeeOther(nxt)
        self._set_cookie(response, sid)
        raise response

    async def _signout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.end(request.cookies.get(COOKIE))
        response = web.HTTPSeeOther("/signin")
        response.del_cookie(COOKIE, path="/")
        raise response

    # --- Settings ------------------------------------------------------------------------------

    def _settings_view(self, request: web.Request, status: int = 200, **ctx: Any) -> web.Response:
        settings = self._manager.settings
        health = self._telemetry.health()
        ctx.setdefault("forms", forms_from_settings(settings))
        ctx.setdefault("problems", {})
        ctx.setdefault("message", "")
        ctx.setdefault("error", "")
        ctx.setdefault("tests", {})
        ctx.setdefault("expected_version", settings.version)
        return self._render(
            request,
            "settings.html",
            status=status,
            version=settings.version,
            health={"traces": health.traces, "metrics": health.metrics},
            sections=SECTIONS,
            **ctx,
        )

    async def _settings_page(self, request: web.Request) -> web.StreamResponse:
        saved = request.query.get("saved", "")
        message = f"Saved: version {saved} is applied." if saved.isdigit() else ""
        return self._settings_view(request, message=message)

    async def _settings_post(self, request: web.Request) -> web.StreamResponse:
        form = request[_FORM]
        action = str(form.get("action", ""))
        session: Session = request[_SESSION]
        expected = _int(form.get("expected_version"))
        if action.startswith("test:") and action[5:] in SECTIONS:
            section = action[5:]
            shown = to_proto(self._manager.settings)
            config, forms, problems = config_from_form(form, shown, (section,))
            if not problems:
                try:
                    results = await self._manager.test(config)
                except InvalidConfig as e:
                    problems = e.problems
            if problems:
                return self._settings_view(
                    request,
                    400,
                    forms=forms,
                    problems=field_problems(problems),
                    expected_version=expected,
                    error="Nothing was tested: fix the fields marked below.",
                )
            return self._settings_view(
                request, forms=forms, tests=results, expected_version=expected
            )
        if action != "save":
            return self._settings_view(request, 400, error="Unknown action.")
        config, forms, problems = config_from_form(form, to_proto(self._manager.settings))
        if problems:
            return self._settings_view(
                request,
                400,
                forms=forms,
                problems=field_problems(problems),
                expected_version=expected,
                error="Nothing was saved: fix the fields marked below.",
            )
        try:
            settings = await self._manager.set(config, expected, author=session.principal)
        except CHANGE_ERRORS as e:
            code, message = change_failure(e)
            problems_by_field = field_problems(e.problems) if isinstance(e, InvalidConfig) else {}
            return self._settings_view(
                request,
                409 if code.name == "FAILED_PRECONDITION" else 400,
                forms=forms,
                problems=problems_by_field,
                expected_version=expected,
                error=(
                    "Nothing was saved: fix the fields marked below."
                    if problems_by_field
                    else f"Nothing was saved ({code.name}): {message}"
                ),
            )
        raise web.HTTPSeeOther(f"/settings?saved={settings.version}")

    # --- Traces --------------------------------------------------------------------------------

    async def _traces_page(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        filters = {
            "model": q.get("model", ""),
            "status": q.get("status", ""),
            "start_min": q.get("start_min", ""),
            "start_max": q.get("start_max", ""),
            "min_ms": q.get("min_ms", ""),
        }
        traces: list[Any] = []
        token = ""
        error = ""
        try:
            if filters["status"] not in ("", "OK", "ERROR"):
                raise ValueError("status: OK, ERROR or any")
            try:
                min_ms = float(filters["min_ms"] or 0)
            except ValueError:
                raise ValueError("min_duration: a number of milliseconds") from None
            if not min_ms >= 0:
                raise ValueError("min_duration: must be >= 0")
            await asyncio.to_thread(self._telemetry.flush_traces, READ_YOUR_WRITES_SECONDS)
            traces, token = await asyncio.to_thread(
                self._telemetry.traces.list_traces,
                model=filters["model"],
                status=filters["status"],
                start_min_ns=_parse_time(filters["start_min"], "start_time_min"),
                start_max_ns=_parse_time(filters["start_max"], "start_time_max"),
                min_duration_ns=int(min_ms * 1e6),
                page_size=min(_PAGE_SIZE, MAX_PAGE_SIZE),
                page_token=q.get("page_token", ""),
            )
        except (ValueError, TraceStoreUnavailable) as e:
            error = str(e)
        next_url = ""
        if token:
            next_url = "/traces?" + urlencode({**filters, "page_token": token})
        return self._render(
            request,
            "traces.html",
            status=400 if error else 200,
            traces=traces,
            filters=filters,
            next_url=next_url,
            first_page=not q.get("page_token"),
            error=error,
        )

    async def _trace_page(self, request: web.Request) -> web.StreamResponse:
        trace_id = request.match_info["trace_id"].lower()
        if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
            return self._render(
                request,
                "trace.html",
                status=400,
                trace_id="",
                waterfall=None,
                error="trace_id: must be 32 hexadecimal digits",
            )
        try:
            await asyncio.to_thread(self._telemetry.flush_traces, READ_YOUR_WRITES_SECONDS)
            spans = await asyncio.to_thread(self._telemetry.traces.get_trace, trace_id)
        except TraceStoreUnavailable as e:
            return self._render(
                request, "trace.html", status=503, trace_id=trace_id, waterfall=None, error=str(e)
            )
        if not spans:
            return self._render(
                request,
                "trace.html",
                status=404,
                trace_id=trace_id,
                waterfall=None,
                error=f"trace_id: no trace {trace_id} in the trace store",
            )
        return self._render(
            request, "trace.html", trace_id=trace_id, waterfall=draw_waterfall(spans), error=""
        )

    # --- Overview and replicas -----------------------------------------------------------------

    async def _overview_page(self, request: web.Request) -> web.StreamResponse:
        return self._render(
            request, "overview.html", charts=self.ring.charts(), interval=self.ring.interval
        )

    async def _overview_charts(self, request: web.Request) -> web.StreamResponse:
        return self._render(request, "charts.html", charts=self.ring.charts())

    async def _replicas_page(self, request: web.Request) -> web.StreamResponse:
        try:
            fleet = await fleet_view(self._replicas, self._manager)
        except FleetUnavailable as e:
            return self._render(request, "replicas.html", status=503, fleet=None, error=str(e))
        return self._render(
            request, "replicas.html", fleet=fleet, error="", health_of=health_from_document
        )


def _int(value: Any) -> int | None:
    text = str(value or "")
    return int(text) if text.isdigit() else None
