"""A real headless Chromium follows General over a cross-origin EventSource across a server restart.

The page (served from its own origin) opens one EventSource and posts with fetch. The API server
is stopped; while it is down another instance on the same database stores three messages; then
the API comes back on the same port and two more messages are posted at once. The browser must
reconnect by itself, send Last-Event-ID, and end up with every id exactly once, in order.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from chat_server.app import create_app
from chat_server.settings import Settings
from chat_server.store import store_key

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "browser"
# Milliseconds a wait in the page may take before the test fails (the reconnect alone takes 3 s).
WAIT_MS = 20_000

PAGE_HTML = """<!doctype html>
<html lang="es">
<head><meta charset="utf-8"><title>chat SSE</title>
<style>
  body { font: 14px sans-serif; margin: 1em; }
  #status { color: #555; }
  li { margin: 2px 0; }
</style>
</head>
<body>
<h1>General</h1>
<p id="status">starting</p>
<ol id="messages"></ol>
<script>
const API = __API__;
const CHAT_ID = __CHAT_ID__;
window.received = [];
window.opens = 0;
window.errors = 0;
window.errorStates = [];
window.sourcesCreated = 0;
window.timeline = [];
function note(what) { window.timeline.push(Math.round(performance.now()) + "ms " + what); }

const list = document.getElementById("messages");
const statusLine = document.getElementById("status");

const source = new EventSource(API + "/api/stream?chat_id=" + CHAT_ID);
window.sourcesCreated += 1;
window.firstSource = source;
window.source = source;

function render() {
  statusLine.textContent = "opens=" + window.opens + " errors=" + window.errors +
    " readyState=" + source.readyState + " received=" + window.received.length;
}
source.onopen = () => { window.opens += 1; note("open"); render(); };
source.onerror = () => {
  window.errors += 1;
  window.errorStates.push(source.readyState);
  note("error readyState=" + source.readyState);
  render();
};
source.addEventListener("message", (e) => {
  const data = JSON.parse(e.data);
  window.received.push({lastEventId: e.lastEventId, data: data});
  note("message " + e.lastEventId);
  const item = document.createElement("li");
  item.textContent = "#" + data.id + " " + data.username + ": " + data.contenido;
  list.appendChild(item);
  render();
});

window.post = async (text) => {
  note("post " + JSON.stringify(text));
  const response = await fetch(API + "/api/messages", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({chat_id: CHAT_ID, contenido: text, username: "navegador"}),
  });
  const body = await response.json();
  note("posted " + response.status + " id=" + (body.message && body.message.id));
  return {status: response.status, body: body};
};
</script>
</body>
</html>
"""


def _require_chromium() -> None:
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return
    reason = f"{CHROMIUM} not found: install Debian's chromium package to run the browser test"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser test)", pytrace=False)
    pytest.skip(reason)


def _store_name(database_url: str) -> str:
    return database_url.split(":", 1)[0]


async def _start(app: web.Application, port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve `app` on 127.0.0.1 (port 0: a free one); the runner and the bound port."""
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound: int = runner.addresses[0][1]
    return runner, bound


def _api_app(settings: Settings, stream_requests: list[dict[str, str | None]]) -> web.Application:
    """The chat app, recording the Last-Event-ID of every stream it answers."""
    app = create_app(settings)

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        if request.method == "GET" and request.path == "/api/stream":
            stream_requests.append(
                {"last_event_id": request.headers.get("Last-Event-ID"), "query": request.query_string}
            )

    app.on_response_prepare.append(record)
    return app


def _page_app(api_base: str, chat_id: int) -> web.Application:
    html = PAGE_HTML.replace("__API__", json.dumps(api_base)).replace("__CHAT_ID__", str(chat_id))

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    return app


async def _post(session: aiohttp.ClientSession, api_base: str, chat_id: int, text: str) -> int:
    payload = {"chat_id": chat_id, "contenido": text, "username": "servidor"}
    async with session.post(f"{api_base}/api/messages", json=payload) as resp:
        body = await resp.json()
        assert resp.status == 201, (resp.status, body)
        return int(body["message"]["id"])


async def _page_post(page: Page, text: str) -> int:
    result: dict[str, Any] = await page.evaluate("(text) => window.post(text)", text)
    assert result["status"] == 201, result
    return int(result["body"]["message"]["id"])


PAGE_STATE = """() => ({
    opens: window.opens,
    errors: window.errors,
    errorStates: window.errorStates,
    sourcesCreated: window.sourcesCreated,
    sameSource: window.source === window.firstSource,
    readyState: window.source.readyState,
    receivedIds: window.received.map((r) => r.data.id),
    items: document.querySelectorAll("#messages li").length,
    timeline: window.timeline,
})"""


async def _wait_for(page: Page, expression: str, arg: object = None, **context: object) -> None:
    """Wait until `expression` is true in the page; on timeout, fail with what the page saw."""
    try:
        await page.wait_for_function(expression, arg=arg, timeout=WAIT_MS)
    except PlaywrightTimeoutError:
        state = await page.evaluate(PAGE_STATE)
        pytest.fail(f"timed out waiting for {expression!r} (arg={arg!r}); page: {state}; {context}")


async def _wait_received(page: Page, count: int, **context: object) -> None:
    await _wait_for(page, "(n) => window.received.length >= n", count, **context)


async def test_browser_eventsource_resumes_after_server_restart(database_url: str) -> None:
    _require_chromium()
    store = _store_name(database_url)
    settings = Settings(database_url=database_url, secret="x")
    first_streams: list[dict[str, str | None]] = []
    second_streams: list[dict[str, str | None]] = []

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"eventsource-restart-{store}-failed.png").unlink(missing_ok=True)
    runners: list[web.AppRunner] = []
    try:
        api_app = _api_app(settings, first_streams)
        api_runner, api_port = await _start(api_app)
        runners.append(api_runner)
        api_base = f"http://127.0.0.1:{api_port}"
        general_id = api_app[store_key].general_id

        page_runner, page_port = await _start(_page_app(api_base, general_id))
        runners.append(page_runner)
        assert page_port != api_port  # a different origin: CORS is exercised

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            page: Page | None = None
            try:
                page = await browser.new_page()
                page_errors: list[str] = []
                page.on("pageerror", lambda exc: page_errors.append(str(exc)))
                await page.goto(f"http://127.0.0.1:{page_port}/")
                await _wait_for(page, "window.opens === 1")

                # 1. Live: the page posts over fetch and hears it back over its EventSource.
                expected = [await _page_post(page, f"{store}: hola desde el navegador")]
                await _wait_received(page, 1, streams=first_streams)

                # 2. Stop the API; on_shutdown ends the stream and the browser starts reconnecting.
                runners.remove(api_runner)
                await api_runner.cleanup()
                await _wait_for(
                    page, "window.errors >= 1 && window.source.readyState === EventSource.CONNECTING"
                )

                # 3. While the API is down, another instance on the same database stores three
                #    messages. The browser can only get them by replay from its Last-Event-ID.
                writer_runner, _ = await _start(create_app(settings))
                runners.append(writer_runner)
                writer_base = f"http://127.0.0.1:{writer_runner.addresses[0][1]}"
                async with aiohttp.ClientSession() as session:
                    for n in range(1, 4):
                        expected.append(await _post(session, writer_base, general_id, f"{store}: caido {n}"))
                runners.remove(writer_runner)
                await writer_runner.cleanup()

                # 4. The API comes back on the same port; two more at once, racing the reconnect.
                api_runner, _ = await _start(_api_app(settings, second_streams), api_port)
                runners.append(api_runner)
                async with aiohttp.ClientSession() as session:
                    for n in range(1, 3):
                        expected.append(await _post(session, api_base, general_id, f"{store}: reinicio {n}"))

                await _wait_received(page, len(expected), expected=expected, streams=second_streams)
                await _wait_for(page, "window.opens === 2")

                # 5. After the reconnect, live delivery still works for the page's own posts.
                expected.append(await _page_post(page, f"{store}: de nuevo en vivo"))
                await _wait_received(page, len(expected))

                received: list[dict[str, Any]] = await page.evaluate("window.received")
                state: dict[str, Any] = await page.evaluate(PAGE_STATE)

                await page.screenshot(
                    path=str(ARTIFACTS / f"eventsource-restart-{store}.png"), full_page=True
                )
            except BaseException:
                if page is not None:  # best effort, for whoever reads the failure
                    with contextlib.suppress(PlaywrightError):
                        shot = ARTIFACTS / f"eventsource-restart-{store}-failed.png"
                        await page.screenshot(path=str(shot), full_page=True)
                raise
            finally:
                await browser.close()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()

    ids = [r["data"]["id"] for r in received]
    assert ids == expected  # every message once, in order: no gap, no duplicate
    assert [r["lastEventId"] for r in received] == [str(i) for i in expected]
    assert all(r["data"]["chat_id"] == general_id for r in received)
    assert [r["data"]["contenido"] for r in received][1:4] == [f"{store}: caido {n}" for n in (1, 2, 3)]
    # The page made one EventSource; the browser reopened it by itself after the stream ended.
    assert state["sourcesCreated"] == 1
    assert state["sameSource"] is True
    assert state["opens"] == 2
    assert state["readyState"] == 1  # OPEN
    assert state["errorStates"][0] == 0  # CONNECTING: a reconnect, not a closed source
    assert state["items"] == len(expected)
    assert page_errors == []
    # The first connect carried no id; the reconnect carried the last id seen before the restart.
    assert first_streams == [{"last_event_id": None, "query": f"chat_id={general_id}"}]
    assert second_streams == [{"last_event_id": str(expected[0]), "query": f"chat_id={general_id}"}]
