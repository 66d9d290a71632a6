"""CHAT_AUTH=strict in a real Chromium, one browser context per device: a taken name is refused
and the page offers another; a login link works once; a verified identity logs in; an expired
session is refused; logout ends the session's other streams."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect

from chat_server.sessions import sessions_key
from chat_server.settings import Settings

from .test_web_client import (  # noqa: F401 - fixtures
    WAIT_MS,
    Browsing,
    Person,
    Server,
    browsing,
    call,
    expect_connection,
    http,
    log_in,
)

pytestmark = pytest.mark.browser

ADMIN_PASSWORD = "web-strict-admin"
IDENTITY_SECRET = "web-strict-host"
SESSION_DAYS = 1


@pytest.fixture
async def strict_server(tmp_path: Path) -> AsyncIterator[Server]:
    """On the embedded store: the page is the subject here; tests/test_strict.py holds the same
    rules to both stores through the API."""
    server = Server(
        Settings(
            database_url=f"sqlite:///{tmp_path}/chat.sqlite3",
            secret="web-strict",
            auth_mode="strict",
            admin_password=ADMIN_PASSWORD,
            identity_secret=IDENTITY_SECRET,
            session_days=SESSION_DAYS,
        )
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def try_name(person: Person, server: Server, name: str) -> None:
    await person.page.goto(f"{server.url}/")
    await expect(person.page.locator("#ingreso")).to_be_visible(timeout=WAIT_MS)
    await person.page.fill("#nombre", name)
    await person.page.click("#entrar")


async def login_link(client: aiohttp.ClientSession, server: Server, username: str) -> Any:
    admin = await call(
        client, "POST", f"{server.url}/api/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    auth = {"Authorization": f"Bearer {admin['token']}"}
    me = await call(client, "GET", f"{server.url}/api/chats", headers=auth)
    user_id = next(p["id"] for c in me["chats"] for p in c["participants"] if p["username"] == username)
    return await call(client, "POST", f"{server.url}/api/users/{user_id}/login-link", headers=auth)


async def test_strict_mode_in_the_browser(
    strict_server: Server,
    http: aiohttp.ClientSession,  # noqa: F811
    browsing: Browsing,  # noqa: F811
) -> None:
    server = strict_server
    ana = await browsing.person("ana")
    await log_in(ana, server)
    await expect_connection(ana, "connected")

    # Another device cannot take the name: the page says so and offers another, which works.
    other = await browsing.person("otra")
    await try_name(other, server, "ana")
    error = other.page.locator("#error-ingreso")
    await expect(error).to_contain_text("ya tiene dueño", timeout=WAIT_MS)
    offered = await other.page.locator("#nombre").input_value()
    assert offered.startswith("ana-")
    await other.page.click("#entrar")
    await expect(other.page.locator("#yo")).to_have_text(offered, timeout=WAIT_MS)
    # Its chats are its own: General and its DM with the admin, not ana's.
    await expect(other.page.locator(".chat")).to_have_count(2, timeout=WAIT_MS)

    # A login link from the admin: a new device of ana's uses it once, in two tabs.
    link = await login_link(http, server, "ana")
    phone = await browsing.person("ana")
    await phone.page.goto(link["url"])
    await expect(phone.page.locator("#yo")).to_have_text("ana", timeout=WAIT_MS)
    assert "login_code" not in phone.page.url
    await expect_connection(phone, "connected")
    second_tab = await browsing.tab("ana", phone.context)
    await second_tab.page.goto(f"{server.url}/")
    await expect(second_tab.page.locator("#yo")).to_have_text("ana", timeout=WAIT_MS)
    await expect_connection(second_tab, "connected")
    # Used: another device with the same link gets the login form, and why.
    thief = await browsing.person("ladrón")
    await thief.page.goto(link["url"])
    await expect(thief.page.locator("#ingreso")).to_be_visible(timeout=WAIT_MS)
    await expect(thief.page.locator("#error-ingreso")).to_contain_text("ya se usó", timeout=WAIT_MS)

    # Logout on the phone ends the session: its other tab's stream is ended by the server.
    await phone.page.click("#salir")
    await expect(phone.page.locator("#ingreso")).to_be_visible(timeout=WAIT_MS)
    await expect(second_tab.page.locator("#conexion")).not_to_have_attribute(
        "data-state", "connected", timeout=WAIT_MS
    )

    # A host site vouches for ana: its server made the HMAC, its page links to the chat with it.
    host = await browsing.person("ana")
    user_hash = hmac.new(IDENTITY_SECRET.encode(), b"ana", hashlib.sha256).hexdigest()
    await host.page.goto(f"{server.url}/?username=ana&user_hash={user_hash}")
    await expect(host.page.locator("#yo")).to_have_text("ana", timeout=WAIT_MS)
    assert "user_hash" not in host.page.url
    forged = await browsing.person("ana")
    await forged.page.goto(f"{server.url}/?username=ana&user_hash={'0' * 64}")
    await expect(forged.page.locator("#error-ingreso")).to_contain_text(
        "No se pudo comprobar", timeout=WAIT_MS
    )

    # A session not used for longer than CHAT_SESSION_DAYS is refused: the page asks to log in.
    sessions = server.runner.app[sessions_key] if server.runner and server.runner.app else None
    assert sessions is not None
    sessions.clock = lambda: time.time() + SESSION_DAYS * 86_400 + 60
    await ana.page.reload()
    await expect(ana.page.locator("#ingreso")).to_be_visible(timeout=WAIT_MS)
    await expect(ana.page.locator("#error-ingreso")).to_contain_text("sesión terminó", timeout=WAIT_MS)
    browsing.assert_no_page_errors()
