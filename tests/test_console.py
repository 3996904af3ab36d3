"""The operator console in a real browser (headless Chromium through Selenium).

The gateway runs on the test's event loop; browser steps are blocking, so each runs in a worker
thread. The run saves screenshots of every page (to docs/console/, which the README shows,
with AIGW_SCREENSHOTS=docs/console; else to a temp directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import grpc
import pytest
from aigw.v1 import completion_pb2_grpc
from selenium.webdriver.common.by import By

from admin.otel_proto import to_proto
from gateway.server import Gateway
from tests.browser import Browser, chromium
from tests.conftest import GatewayFactory, chat
from tests.otlp_receivers import HttpOtlpReceiver, closed_port_url

TOKEN = "console-test-admin-token-0123456789"
SECRET = "header-secret-value-42"
PAGES = ("/", "/overview", "/traces", "/traces/" + "ab" * 16, "/settings", "/replicas")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


async def _admin_gateway(gateway_factory: GatewayFactory, browser: Browser) -> Gateway:
    gw = await gateway_factory(env={"AIGW_ADMIN_TOKEN": TOKEN})
    browser.base = f"http://127.0.0.1:{gw.metrics_port}"
    await asyncio.to_thread(browser.driver.delete_all_cookies)
    return gw


async def _call(gw: Gateway, model: str = "echo", text: str = "hello console") -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        stub = completion_pb2_grpc.CompletionStub(ch)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.Complete(chat(text, model=model))


def _sign_in(b: Browser, token: str = TOKEN) -> None:
    b.get("/signin")
    b.fill("#token", token)
    b.find("#token").submit()


def _settings_version(b: Browser) -> str:
    return b.find('input[name="expected_version"]').get_attribute("value") or ""


async def test_signed_out_every_page_redirects_to_sign_in(
    gateway_factory: GatewayFactory, browser: Browser
) -> None:
    await _admin_gateway(gateway_factory, browser)

    def visit(b: Browser) -> None:
        for page in PAGES:
            b.get(page)
            assert b.path.startswith("/signin?next="), (page, b.path)
            assert b.find("label[for=token]").text.startswith("Admin token")
        b.screenshot("signin")
        # A wrong token is refused on the page; the right one lands where we were going.
        b.get("/traces")
        b.fill("#token", "not-the-token")
        b.find("#token").submit()
        assert "not the admin token" in b.find("#signin-error").text
        b.fill("#token", TOKEN)
        b.find("#token").submit()
        assert b.path == "/traces"
        cookie = b.driver.get_cookie("aigw_console")
        assert cookie is not None
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert "expiry" in cookie
        assert TOKEN not in b.driver.page_source
        # Signing out ends the session: pages redirect again.
        b.find("form.signout button").click()
        b.wait(lambda d: "/signin" in d.current_url)
        b.get("/settings")
        assert b.path.startswith("/signin?next=")

    await asyncio.to_thread(visit, browser)


async def test_settings_send_traces_to_a_live_receiver_and_keep_masked_headers(
    gateway_factory: GatewayFactory, browser: Browser
) -> None:
    gw = await _admin_gateway(gateway_factory, browser)
    assert gw.otel is not None
    with HttpOtlpReceiver() as rx:

        def configure(b: Browser) -> None:
            _sign_in(b)
            b.get("/settings")
            b.find("#traces-enabled").click()
            b.fill("#traces-endpoint", rx.traces_url)
            b.fill('input[aria-label="traces new header name"]', "X-Api-Key")
            b.fill('input[aria-label="traces new header value"]', SECRET)
            b.fill("#traces-timeout", "3")
            b.find("#save").click()
            assert "Saved: version 1 is applied." in b.wait_for("#message").text

        await asyncio.to_thread(configure, browser)
        assert gw.otel.settings.version == 1
        await _call(gw)
        records = await asyncio.to_thread(rx.wait_for_requests, 1, 15)
        assert rx.spans(), "no span arrived at the receiver"
        assert records[-1].headers.get("x-api-key") == SECRET

        def masked_then_save(b: Browser) -> None:
            b.get("/settings")
            assert SECRET not in b.driver.page_source
            name = b.find('input[aria-label="traces header 1 name"]')
            value = b.find('input[aria-label="traces header 1 value"]')
            assert name.get_attribute("value") == "x-api-key"
            assert value.get_attribute("value") == "********"
            assert "never" not in b.find("#health-traces").text.split("Last error")[0]
            b.screenshot("settings")
            b.fill("#traces-timeout", "4")  # change something else; the header is not retyped
            b.find("#save").click()
            assert "version 2" in b.wait_for("#message").text

        await asyncio.to_thread(masked_then_save, browser)
        assert gw.otel.settings.traces.header_dict == {"x-api-key": SECRET}
        assert gw.otel.settings.traces.timeout == 4
        rx.clear()
        await _call(gw)
        records = await asyncio.to_thread(rx.wait_for_requests, 1, 15)
        assert records[-1].headers.get("x-api-key") == SECRET

        def invalid_endpoint(b: Browser) -> None:
            b.get("/settings")
            b.fill("#traces-endpoint", "ftp://collector.example/v1/traces")
            b.find("#save").click()
            error = b.wait_for("#err-traces-endpoint").text
            assert "must start with http:// or https://" in error
            assert b.find("#traces-endpoint").get_attribute("aria-invalid") == "true"
            assert "Nothing was saved" in b.find("#form-error").text

        await asyncio.to_thread(invalid_endpoint, browser)
        assert gw.otel.settings.version == 2
        assert gw.otel.settings.traces.endpoint == rx.traces_url

        dead = closed_port_url()

        def test_dead_endpoint(b: Browser) -> None:
            b.get("/settings")
            b.fill("#traces-endpoint", dead)
            # The stored header is kept only for its own origin: drop it for this one.
            b.find('input[aria-label="traces header 1 name"]').clear()
            b.find("#test-traces").click()
            result = b.wait_for("#test-result-traces").text
            assert "Export failed" in result
            assert "connection" in result.lower() or "refused" in result.lower(), result
            b.screenshot("settings-test")

        await asyncio.to_thread(test_dead_endpoint, browser)
        assert gw.otel.settings.version == 2  # a Test changes nothing

        def stale_form(b: Browser) -> None:
            b.get("/settings")
            assert _settings_version(b) == "2"

        await asyncio.to_thread(stale_form, browser)
        # Someone else changes the config meanwhile (the API, another replica).
        await gw.otel.set(to_proto(gw.otel.settings), None, author="someone-else")
        assert gw.otel.settings.version == 3

        def concurrent(b: Browser) -> None:
            b.fill("#traces-timeout", "5")
            b.find("#save").click()
            text = b.wait_for("#form-error").text
            assert "expected_version: config is at version 3, not 2" in text

        await asyncio.to_thread(concurrent, browser)
        assert gw.otel.settings.version == 3
        assert gw.otel.settings.traces.timeout == 4


async def test_cross_site_and_tokenless_posts_are_refused(
    gateway_factory: GatewayFactory, browser: Browser
) -> None:
    gw = await _admin_gateway(gateway_factory, browser)
    assert gw.otel is not None
    target = browser.base + "/settings"

    def attack(b: Browser) -> None:
        _sign_in(b)
        # A page on another site posts the form (the session cookie is SameSite=Strict).
        page = (
            "data:text/html,<form method=post action='" + target + "'>"
            "<input name=action value=save><input name='traces.enabled' value=on>"
            "<input name='traces.endpoint' value='http://127.0.0.1:9/v1/traces'></form>"
            "<script>document.forms[0].submit()</script>"
        )
        b.driver.get(page)
        b.wait(lambda d: d.current_url.startswith(target))
        body = b.find("body").text
        assert "nothing was changed" in body.lower(), body
        # The console's own origin, signed in, but without the CSRF token.
        b.get("/settings")
        status = b.driver.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            const body = new URLSearchParams({action: "save", "traces.enabled": "on",
                "traces.endpoint": "http://127.0.0.1:9/v1/traces"});
            fetch("/settings", {method: "POST", body}).then(r => done(r.status));
            """
        )
        assert status == 403

    await asyncio.to_thread(attack, browser)
    assert gw.otel.settings.version == 0
    assert not gw.otel.settings.traces.enabled


async def test_traces_list_waterfall_and_escaping(
    gateway_factory: GatewayFactory, browser: Browser
) -> None:
    gw = await _admin_gateway(gateway_factory, browser)
    assert gw.telemetry is not None
    await _call(gw, text="a call to find in Traces")
    with gw.telemetry.tracer.start_as_current_span(
        "hostile <b>span</b>",
        attributes={"evil": "<script>window.pwned = 1</script>", "aigw.route": "<i>route</i>"},
    ):
        pass
    store = gw.telemetry.traces
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        traces, _ = await asyncio.to_thread(store.list_traces, page_size=10)
        if len(traces) >= 2 and any(t.span_count >= 2 for t in traces):
            break
        await asyncio.sleep(0.2)
    call = next(t for t in traces if t.model == "echo")

    def look(b: Browser) -> None:
        _sign_in(b)
        b.get("/traces")
        rows = b.find_all("tr.trace-row")
        assert len(rows) >= 2
        assert any(r.find_element(By.CSS_SELECTOR, ".model").text == "<i>route</i>" for r in rows)
        b.screenshot("traces")
        b.fill("#f-model", "echo")
        b.find("#f-model").submit()
        rows = b.find_all("tr.trace-row")
        assert len(rows) == 1
        rows[0].find_element(By.CSS_SELECTOR, "a.trace-link").click()
        assert b.path == f"/traces/{call.trace_id}"
        bars = b.find_all("svg.wf-bars rect.bar")
        assert len(bars) == call.span_count >= 2
        names = [e.text for e in b.find_all(".wf-name")]
        assert len(names) == call.span_count
        assert b.find_all("details.span table.attributes tr")
        b.screenshot("trace")
        # The hostile span: its attribute and name render as text, and nothing ran.
        b.get("/traces?model=" + "%3Ci%3Eroute%3C%2Fi%3E")
        b.find("a.trace-link").click()
        assert "<script>window.pwned = 1</script>" in b.find("details.span").text
        assert "hostile <b>span</b>" in b.find(".wf-name").text
        assert b.driver.execute_script("return window.pwned") is None
        assert not b.driver.find_elements(By.CSS_SELECTOR, "main script, main b, main i")

    await asyncio.to_thread(look, browser)


async def test_overview_and_replicas(gateway_factory: GatewayFactory, browser: Browser) -> None:
    gw = await _admin_gateway(gateway_factory, browser)
    for i in range(3):
        for _ in range(5):
            await _call(gw, text=f"overview {i}")
        await _call(gw, model="no-such-route")
        await asyncio.sleep(5.5)  # the console samples every 5 s

    def look(b: Browser) -> None:
        _sign_in(b)
        b.get("/overview")
        charts = b.find_all("figure.chart")
        assert [c.get_attribute("id") for c in charts] == [
            "chart-rate",
            "chart-errors",
            "chart-latency",
            "chart-tokens",
            "chart-ttft",
            "chart-cost",
        ]
        assert b.find_all("#chart-rate polyline")
        assert b.find_all("#chart-errors polyline")
        b.screenshot("overview")
        b.get("/replicas")
        row = b.find("table.replicas tbody tr")
        assert gw.instance_id in row.text
        assert "live" in row.text
        assert "converged" in b.find("main").text
        b.screenshot("replicas")

    await asyncio.to_thread(look, browser)


async def test_without_a_token_loopback_needs_no_sign_in_but_posts_need_csrf(
    gateway_factory: GatewayFactory, browser: Browser
) -> None:
    gw = await gateway_factory(env={})
    browser.base = f"http://127.0.0.1:{gw.metrics_port}"
    assert gw.otel is not None

    def visit(b: Browser) -> None:
        b.driver.delete_all_cookies()
        b.get("/settings")
        assert b.path == "/settings"
        assert not b.find_all("form.signout")
        status = b.driver.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            fetch("/settings", {method: "POST", body: new URLSearchParams({action: "save"})})
              .then(r => done(r.status));
            """
        )
        assert status == 403
        b.find("#traces-timeout").clear()
        b.find("#traces-timeout").send_keys("6")
        b.find("#save").click()
        assert "version 1" in b.wait_for("#message").text

    await asyncio.to_thread(visit, browser)
    assert gw.otel.settings.traces.timeout == 6
