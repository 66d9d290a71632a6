"""The README's deployment, for real: Debian's nginx with the shipped site (TLS, HTTP/2) in front
of the server started as the shipped systemd unit starts it, with the shipped environment file.

The browser reaches nginx at [::1] and nginx reaches the server from 127.0.0.1 (the only trusted
proxy in chat.env.example), so "the server sees the browser's address" is a different address
from "the server sees nginx's"."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from .chat_client import stored_ids
from .databases import throwaway_database
from .deployment import INSTALL_DIR, ROOT, UNIT, Nginx, UnitServer, example_environment, require_nginx
from .services import free_port
from .test_browser import CHROMIUM, CHROMIUM_ARGS, _require_chromium
from .test_scale_out import SHARED_REDIS

# Milliseconds a wait in the page may take before the test fails.
WAIT_MS = 20_000
EVENTSOURCES = 10

OPEN_SOURCES = """async ([count, username]) => {
  const login = await fetch("/api/login", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({username: username}),
  });
  const chats = await (await fetch("/api/chats")).json();
  const general = chats.chats[0].id;
  window.opens = 0;
  window.received = Array.from({length: count}, () => []);
  for (let i = 0; i < count; i++) {
    const source = new EventSource("/api/stream?chat_id=" + general);
    source.onopen = () => { window.opens += 1; };
    source.addEventListener("message", (e) => window.received[i].push(Number(e.lastEventId)));
  }
  return {login: login.status, general: general};
}"""

POST = """async ([chat, text]) => {
  const response = await fetch("/api/messages", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({chat_id: chat, contenido: text}),
  });
  return {status: response.status, body: await response.json()};
}"""


@dataclass
class Deployment:
    server: UnitServer
    nginx: Nginx

    @property
    def origin(self) -> str:
        return f"https://[::1]:{self.nginx.https_port}"

    def access_log(self) -> list[dict[str, Any]]:
        lines = self.server.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith('{"ts"')]


def _shared_redis() -> str:
    try:
        redis.Redis.from_url(SHARED_REDIS, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis not reachable at {SHARED_REDIS}: {exc}", pytrace=False)
    return SHARED_REDIS


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_nginx()
    folder = tmp_path_factory.mktemp("deployment")
    with throwaway_database() as url:
        env = example_environment(
            DATABASE_URL=url,
            REDIS_URL=_shared_redis(),
            CHAT_PORT=str(free_port()),
            CHAT_SECRET=secrets.token_urlsafe(32),
            CHAT_ADMIN_PASSWORD=secrets.token_urlsafe(16),
            CHAT_METRICS_TOKEN=secrets.token_urlsafe(16),
        )
        server = UnitServer(folder, env)
        nginx = Nginx(folder, [f"127.0.0.1:{server.port}"])
        server.start()
        try:
            nginx.start()
            yield Deployment(server, nginx)
        finally:
            nginx.stop()
            assert server.stop() == 0


@pytest.fixture
async def browser() -> AsyncIterator[BrowserContext]:
    _require_chromium()
    async with async_playwright() as playwright:
        chromium: Browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield await chromium.new_context(ignore_https_errors=True)  # our self-signed certificate
        finally:
            await chromium.close()


def _curl(*args: str) -> str:
    done = subprocess.run(["curl", "-sSk", "--max-time", "10", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_chat_page_is_served_over_https_with_http2(deployment: Deployment) -> None:
    version = _curl(
        "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", f"{deployment.origin}/"
    )
    assert version == "2 200"
    assert "<title>Chat</title>" in _curl("--http2", f"{deployment.origin}/")
    http = f"http://[::1]:{deployment.nginx.http_port}/api/chats"
    moved = _curl("-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", http)
    assert moved == f"301 https://[::1]:{deployment.nginx.https_port}/api/chats"


async def _new_page(browser: BrowserContext, deployment: Deployment) -> Page:
    page = await browser.new_page()
    await page.goto(f"{deployment.origin}/healthz")  # any page of the origin will do
    return page


@pytest.mark.browser
async def test_chromium_holds_ten_eventsources_on_one_origin_and_the_server_sees_the_browser(
    deployment: Deployment, browser: BrowserContext
) -> None:
    page = await _new_page(browser, deployment)
    protocol = await page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
    assert protocol == "h2"
    opened = await page.evaluate(OPEN_SOURCES, [EVENTSOURCES, "lucia"])
    assert opened["login"] in (200, 201)
    # Over HTTP/1.1 the browser would hold the 7th and later back: 6 connections per origin.
    await page.wait_for_function(f"window.opens === {EVENTSOURCES}", timeout=WAIT_MS)
    posted = await page.evaluate(POST, [opened["general"], "diez a la vez"])
    assert posted["status"] == 201, posted
    message_id = posted["body"]["message"]["id"]
    await page.wait_for_function(
        "(id) => window.received.every((ids) => ids.includes(id))", arg=message_id, timeout=WAIT_MS
    )
    assert await page.evaluate("window.received") == [[message_id]] * EVENTSOURCES

    # The server saw the browser's scheme (the login cookie is Secure only on https) ...
    cookie = next(c for c in await browser.cookies() if c["name"] == "chat_token")
    assert cookie["secure"] is True
    # ... and the browser's address (::1), not nginx's (127.0.0.1).
    streams = [e for e in deployment.access_log() if e["route"] in ("/api/login", "/api/stream")]
    assert streams
    assert {e["remote"] for e in streams} == {"::1"}


@pytest.mark.browser
async def test_a_page_resumes_through_nginx_across_a_rolling_restart(
    deployment: Deployment, browser: BrowserContext
) -> None:
    page = await _new_page(browser, deployment)
    opened = await page.evaluate(OPEN_SOURCES, [1, "mateo"])
    await page.wait_for_function("window.opens === 1", timeout=WAIT_MS)
    general = opened["general"]
    connector = aiohttp.TCPConnector(ssl=False)
    async with aiohttp.ClientSession(deployment.origin, connector=connector) as http:
        async with http.post("/api/login", json={"username": "poster"}) as resp:
            token = (await resp.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}
        posted: list[int] = []
        restarted = asyncio.Event()

        async def post_until_restarted() -> None:
            while not restarted.is_set() or len(posted) < 20:
                body = {"chat_id": general, "contenido": f"m{len(posted)}"}
                async with http.post("/api/messages", json=body, headers=headers) as resp:
                    assert resp.status == 201, await resp.text()
                    posted.append((await resp.json())["message"]["id"])
                await asyncio.sleep(0.05)  # 20 a second: a busy chat, within the per-user limit

        posting = asyncio.create_task(post_until_restarted())
        await page.wait_for_function("window.received[0].length >= 5", timeout=WAIT_MS)
        start = deployment.server.log_path.read_text().count("rolling restart: done")
        deployment.server.reload()  # the unit's ExecReload
        await asyncio.to_thread(deployment.server.wait_for_log, "rolling restart: done", start + 1)
        restarted.set()
        await asyncio.wait_for(posting, 60)
        stored = await stored_ids(http, "/api/messages", general, headers)

    assert stored[-len(posted) :] == posted
    await page.wait_for_function("(n) => window.received[0].length >= n", arg=len(posted), timeout=WAIT_MS)
    assert await page.evaluate("window.received[0]") == posted  # nothing missing, nothing twice
    assert await page.evaluate("window.opens") >= 2  # its worker was replaced: it reconnected


def test_the_systemd_units_are_valid(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    for unit in (UNIT.parent).glob("*.service"):
        # Where this checkout is, in place of /opt/chat; the unit's name kept for its messages.
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALL_DIR, str(ROOT)))
    units = sorted(str(u) for u in tmp_path.glob("*.service"))
    assert len(units) == 2
    done = subprocess.run([analyze, "verify", *units], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
