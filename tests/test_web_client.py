"""The browser client at `/`, driven in a real headless Chromium against a real server.

Each test serves the app on a free port (`AppRunner` + `TCPSite`, handler cancellation on, as
in production), opens one browser context per person, and waits on what the page shows, with
deadlines. Each page is saved as a screenshot in artifacts/web/ (git-ignored) as the test left it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import (
    Browser,
    BrowserContext,
    Dialog,
    Page,
    Route,
    ViewportSize,
    async_playwright,
    expect,
)
from playwright.async_api import Error as PlaywrightError

from chat_server.app import create_app
from chat_server.settings import Settings

from .test_browser import CHROMIUM, CHROMIUM_ARGS, _require_chromium, _start

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "web"
# Milliseconds a wait on the page may take: a reconnect takes 3 s, a polling round up to 3 s.
WAIT_MS = 15_000
DESKTOP: ViewportSize = {"width": 1100, "height": 700}
PHONE: ViewportSize = {"width": 390, "height": 760}
SECRET = "web-client-test"


# -- the server ----------------------------------------------------------------------


@dataclass
class Server:
    """The app served for real; `stop()` then `start()` restarts it on the same port."""

    settings: Settings
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.runner, self.port = await _start(create_app(self.settings), self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()


@contextlib.asynccontextmanager
async def serving(database_url: str) -> AsyncIterator[Server]:
    server = Server(Settings(database_url=database_url, secret=SECRET))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    """On both stores."""
    async with serving(database_url) as running:
        yield running


@pytest.fixture
async def sqlite_server(tmp_path: Path) -> AsyncIterator[Server]:
    """On the embedded store only, for the tests whose subject is the page, not the store."""
    async with serving(f"sqlite:///{tmp_path}/chat.sqlite3") as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Any:
    async with http.request(method, url, **kwargs) as resp:
        body = await resp.json()
        assert resp.status < 300, (resp.status, body)
        return body


async def dm_with_admin(http: aiohttp.ClientSession, server: Server, username: str) -> int:
    """The DM of the user (created by logging in if needed) with admin."""
    await call(http, "POST", f"{server.url}/api/login", json={"username": username})
    body = {"username": username, "with_username": "admin"}
    return int((await call(http, "POST", f"{server.url}/api/chats/dm", json=body))["chat"]["id"])


async def post(http: aiohttp.ClientSession, base: str, chat_id: int, text: str, username: str) -> int:
    body = {"chat_id": chat_id, "contenido": text, "username": username}
    return int((await call(http, "POST", f"{base}/api/messages", json=body))["message"]["id"])


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


# -- the browser -----------------------------------------------------------------------


@dataclass
class Person:
    name: str
    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@dataclass
class Browsing:
    browser: Browser
    test: str
    people: list[Person] = field(default_factory=list)

    async def person(self, name: str, *, phone: bool = False, no_eventsource: bool = False) -> Person:
        if phone:
            context = await self.browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
        else:
            context = await self.browser.new_context(viewport=DESKTOP)
        if no_eventsource:
            await context.add_init_script("delete window.EventSource")
        return await self.tab(name, context)

    async def tab(self, name: str, context: BrowserContext) -> Person:
        """Another tab in the same browser context (the same person)."""
        person = Person(name, context, await context.new_page())
        person.page.on("pageerror", lambda exc: person.errors.append(str(exc)))

        async def dismiss(dialog: Dialog) -> None:
            person.dialogs.append(dialog.message)
            await dialog.dismiss()

        person.page.on("dialog", dismiss)
        self.people.append(person)
        return person

    async def shoot(self, stage: str = "") -> None:
        """Every page as it is now; `stage` names a moment before the end of the test."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for n, person in enumerate(self.people):
            suffix = f"-{stage}" if stage else ""
            path = ARTIFACTS / f"{self.test}-{n}-{_file_name(person.name)}{suffix}.png"
            with contextlib.suppress(PlaywrightError):
                await person.page.screenshot(path=str(path), full_page=True)

    def assert_no_page_errors(self) -> None:
        for person in self.people:
            assert person.errors == [], (person.name, person.errors)
            assert person.dialogs == [], (person.name, person.dialogs)


@pytest.fixture
async def browsing(request: pytest.FixtureRequest) -> AsyncIterator[Browsing]:
    _require_chromium()
    test = request.node.name.replace("[", "-").replace("]", "")
    for stale in ARTIFACTS.glob(f"{test}-*.png"):
        stale.unlink()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        session = Browsing(browser, test)
        try:
            yield session
        finally:
            # The pages as the test left them: what it checked last, or where it failed.
            await session.shoot()
            await browser.close()


async def log_in(person: Person, server: Server) -> None:
    """Open the page and log in by name (unless a login cookie already did)."""
    page = person.page
    await page.goto(f"{server.url}/")
    await page.wait_for_selector("#ingreso:not([hidden]), #app:not([hidden])", timeout=WAIT_MS)
    if await page.locator("#ingreso").is_visible():
        await page.fill("#nombre", person.name)
        await page.click("#entrar")
    await expect(page.locator("#yo")).to_have_text(person.name, timeout=WAIT_MS)


async def expect_connection(person: Person, state: str) -> None:
    await expect(person.page.locator("#conexion")).to_have_attribute("data-state", state, timeout=WAIT_MS)


def chat(person: Person, chat_id: int, part: str = "") -> Any:
    return person.page.locator(f'.chat[data-chat-id="{chat_id}"] {part}'.strip())


async def open_chat(person: Person, chat_id: int) -> None:
    await chat(person, chat_id).click()
    await expect(person.page.locator("#composer")).to_be_visible(timeout=WAIT_MS)


async def send(person: Person, text: str) -> None:
    """Type and press Enter, as a person would."""
    box = person.page.locator("#texto")
    await box.fill(text)
    await box.press("Enter")
    await expect(box).to_have_value("", timeout=WAIT_MS)


async def expect_texts(person: Person, texts: list[str]) -> None:
    await expect(person.page.locator(".msg .texto")).to_have_text(texts, timeout=WAIT_MS)


async def shown_ids(person: Person) -> list[int]:
    ids: list[str] = await person.page.locator(".msg").evaluate_all(
        "(items) => items.map((i) => i.dataset.id)"
    )
    return [int(i) for i in ids]


async def unread_on_server(http: aiohttp.ClientSession, server: Server, username: str) -> dict[int, int]:
    body = await call(http, "GET", f"{server.url}/api/chats", params={"username": username})
    return {c["id"]: c["unread"] for c in body["chats"]}


async def server_agrees(
    http: aiohttp.ClientSession, server: Server, username: str, chat_id: int, unread: int
) -> None:
    """Wait until the server counts `unread` for the user (pages send markers a moment later)."""
    try:
        async with asyncio.timeout(WAIT_MS / 1000):
            while (await unread_on_server(http, server, username))[chat_id] != unread:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # no event to await: ask again shortly
    except TimeoutError:
        seen = (await unread_on_server(http, server, username))[chat_id]
        raise AssertionError(f"{username} has {seen} unread in chat {chat_id}, not {unread}") from None


# -- the tests -------------------------------------------------------------------------


async def exchange(
    browsing: Browsing, server: Server, http: aiohttp.ClientSession, *, polling: bool
) -> tuple[Person, Person]:
    """Ana (on a phone) writes to the admin; the admin's inbox shows it unread; the admin opens
    it, the badge clears; the admin replies and Ana sees it."""
    state = "polling" if polling else "connected"
    ana = await browsing.person("ana", phone=True, no_eventsource=polling)
    await log_in(ana, server)
    await expect_connection(ana, state)
    dm = await dm_with_admin(http, server, "ana")
    admin = await browsing.person("admin", no_eventsource=polling)
    await log_in(admin, server)
    await expect_connection(admin, state)
    await expect(chat(admin, dm, ".nombre")).to_have_text("ana")
    await expect(chat(admin, dm, ".insignia")).to_have_count(0)

    await open_chat(ana, dm)
    await expect(ana.page.locator(".lateral")).to_be_hidden()  # one pane at a time on a phone
    question = "Hola admin, ¿me ayudas con mi pedido? 🙂"
    await send(ana, question)
    await expect_texts(ana, [question])

    await expect(chat(admin, dm, ".insignia")).to_have_text("1", timeout=WAIT_MS)
    await expect(chat(admin, dm, ".vista")).to_have_text(question, timeout=WAIT_MS)
    # Most recent activity first, after General.
    await expect(admin.page.locator(".chat").nth(1)).to_have_attribute("data-chat-id", str(dm))
    await server_agrees(http, server, "admin", dm, 1)

    await open_chat(admin, dm)
    await expect_texts(admin, [question])
    await expect(chat(admin, dm, ".insignia")).to_have_count(0)
    answer = "¡Claro! Dime el número, por favor."
    await send(admin, answer)
    await expect_texts(admin, [question, answer])
    await expect_texts(ana, [question, answer])
    await server_agrees(http, server, "admin", dm, 0)
    await server_agrees(http, server, "ana", dm, 0)

    # Times are shown as HH:MM in Lima time (the API's timestamps carry -05:00).
    history = await call(http, "GET", f"{server.url}/api/messages", params={"chat_id": dm, "username": "ana"})
    times = [m["timestamp"][11:16] for m in history["messages"]]
    assert all(m["timestamp"].endswith("-05:00") for m in history["messages"])
    await expect(ana.page.locator(".msg time")).to_have_text(times)
    return ana, admin


async def test_a_user_and_the_admin_talk_live(
    server: Server, http: aiohttp.ClientSession, browsing: Browsing
) -> None:
    ana, admin = await exchange(browsing, server, http, polling=False)
    dm = await dm_with_admin(http, server, "ana")
    # Ana is online (her stream is open): the admin's inbox shows it.
    await expect(chat(admin, dm, ".punto.en-linea")).to_have_count(1)
    await expect(admin.page.locator("#subtitulo")).to_have_text("En línea")

    # A second tab of the admin: it counts a new message, and clears it when the first tab
    # reads it (event: read on the admin's own stream).
    second = await browsing.tab("admin", admin.context)
    await log_in(second, server)
    await expect_connection(second, "connected")
    general = (await call(http, "GET", f"{server.url}/api/chats", params={"username": "admin"}))["chats"][0]
    await open_chat(admin, general["id"])  # tab one looks at General now
    await send(ana, "¿Sigues ahí?")
    for tab in (admin, second):
        await expect(chat(tab, dm, ".insignia")).to_have_text("1")
    await open_chat(admin, dm)
    await expect(chat(second, dm, ".insignia")).to_have_count(0)
    await expect(chat(admin, dm, ".insignia")).to_have_count(0)
    browsing.assert_no_page_errors()


async def test_without_eventsource_the_page_polls_every_3_seconds(
    sqlite_server: Server, http: aiohttp.ClientSession, browsing: Browsing
) -> None:
    streams: list[str] = []
    ana, admin = await exchange(browsing, sqlite_server, http, polling=True)
    for person in (ana, admin):
        person.page.on("request", lambda r: streams.append(r.url) if "/api/stream" in r.url else None)
        await expect(person.page.locator("#aviso")).to_contain_text("cada 3 segundos")
        assert await person.page.evaluate("typeof window.EventSource") == "undefined"
    # Still polling: a new message reaches the admin's open chat within a round.
    await send(ana, "y otra cosa más")
    await expect(admin.page.locator(".msg .texto").last).to_have_text("y otra cosa más")
    assert streams == []
    browsing.assert_no_page_errors()


async def test_text_is_shown_as_text_and_runs_nothing(
    sqlite_server: Server, http: aiohttp.ClientSession, browsing: Browsing
) -> None:
    server = sqlite_server
    name = "<i>eva</i>"
    eva = await browsing.person(name)
    await log_in(eva, server)
    dm = await dm_with_admin(http, server, name)
    admin = await browsing.person("admin")
    await log_in(admin, server)
    await expect_connection(admin, "connected")
    await open_chat(admin, dm)
    await expect(admin.page.locator("#titulo")).to_have_text(name)

    hostile = [
        "<img src=x onerror=alert(1)>",
        "<script>window.pwned = 1</script><b>negrita</b>",
        '"><svg onload=alert(2)>',
    ]
    await open_chat(eva, dm)
    for text in hostile:
        await send(eva, text)
    await expect_texts(admin, hostile)
    await expect_texts(eva, hostile)
    await expect(chat(admin, dm, ".vista")).to_have_text(hostile[-1])
    for person in (eva, admin):
        created = "document.querySelectorAll('img, svg, b, i, script:not([src])').length"
        assert await person.page.evaluate(created) == 0
        assert await person.page.evaluate("typeof window.pwned") == "undefined"
    browsing.assert_no_page_errors()  # includes: no alert() dialog was opened


async def test_scrolling_up_loads_older_messages(
    sqlite_server: Server, http: aiohttp.ClientSession, browsing: Browsing
) -> None:
    server = sqlite_server
    dm = await dm_with_admin(http, server, "ana")
    ids = [await post(http, server.url, dm, f"mensaje {n}", "ana") for n in range(120)]
    admin = await browsing.person("admin")
    await log_in(admin, server)
    await expect(chat(admin, dm, ".insignia")).to_have_text("99+")
    await open_chat(admin, dm)
    await expect(admin.page.locator(".msg")).to_have_count(50)
    assert await shown_ids(admin) == ids[-50:]
    box = admin.page.locator("#mensajes")
    for count in (100, 120):
        await box.evaluate("(box) => { box.scrollTop = 0; }")
        await expect(admin.page.locator(".msg")).to_have_count(count, timeout=WAIT_MS)
    assert await shown_ids(admin) == ids
    await expect(admin.page.locator("#historial")).to_have_text("Inicio de la conversación.")
    await expect(chat(admin, dm, ".insignia")).to_have_count(0)
    browsing.assert_no_page_errors()


async def test_a_server_restart_mid_conversation_loses_nothing(
    server: Server, http: aiohttp.ClientSession, browsing: Browsing
) -> None:
    dm = await dm_with_admin(http, server, "ana")
    ana = await browsing.person("ana")
    await log_in(ana, server)
    await expect_connection(ana, "connected")
    await open_chat(ana, dm)
    expected = [await post(http, server.url, dm, "antes del reinicio", "admin")]
    await expect(ana.page.locator(".msg")).to_have_count(1)

    # The server stops: its streams end, and the page says it is reconnecting.
    await server.stop()
    await expect_connection(ana, "reconnecting")

    # Meanwhile another instance on the same database stores three messages: the page can
    # only get them by resuming from the last id it saw.
    async with serving(server.settings.database_url) as other:
        for n in range(1, 4):
            expected.append(await post(http, other.url, dm, f"durante {n}", "admin"))

    # Back on the same port; two more at once, racing the page's reconnect.
    await server.start()
    for n in range(1, 3):
        expected.append(await post(http, server.url, dm, f"después {n}", "admin"))
    await expect(ana.page.locator(".msg")).to_have_count(len(expected), timeout=WAIT_MS)
    await expect_connection(ana, "connected")
    assert await shown_ids(ana) == expected  # every message once, in order

    # Live again, both ways.
    await send(ana, "¿me escuchas?")
    expected.append(await post(http, server.url, dm, "sí, te escucho", "admin"))
    await expect(ana.page.locator(".msg")).to_have_count(len(expected) + 1)
    await expect(ana.page.locator(".msg .texto").last).to_have_text("sí, te escucho")
    browsing.assert_no_page_errors()


async def test_a_stream_that_keeps_failing_falls_back_to_polling_then_resumes(
    sqlite_server: Server, http: aiohttp.ClientSession, browsing: Browsing
) -> None:
    server = sqlite_server
    dm = await dm_with_admin(http, server, "ana")
    first = await post(http, server.url, dm, "hola", "ana")
    admin = await browsing.person("admin")
    # A proxy in the way answers 503 to every stream: EventSource gives up each time.
    failing = [True]

    async def streams(route: Route) -> None:
        if failing[0]:
            await route.fulfill(status=503, content_type="application/json", body='{"error": "busy"}')
        else:
            await route.continue_()

    await admin.context.route("**/api/stream*", streams)
    stream_urls: list[str] = []
    admin.page.on("request", lambda r: stream_urls.append(r.url) if "/api/stream" in r.url else None)
    await log_in(admin, server)
    await open_chat(admin, dm)
    await expect_connection(admin, "polling")
    await expect(admin.page.locator("#aviso")).to_contain_text("La conexión en vivo falla")
    assert len(stream_urls) >= 3

    # The proxy recovers: the page makes a new EventSource, resuming from the newest id its
    # streams had carried (none yet: the chat list's newest), and is live again.
    failing[0] = False
    missed = await post(http, server.url, dm, "¿hay alguien?", "ana")
    await expect_connection(admin, "connected")
    assert f"last_event_id={first}" in stream_urls[-1]
    await expect_texts(admin, ["hola", "¿hay alguien?"])
    live = await post(http, server.url, dm, "ya en vivo", "ana")
    await expect_texts(admin, ["hola", "¿hay alguien?", "ya en vivo"])
    assert await shown_ids(admin) == [first, missed, live]
    browsing.assert_no_page_errors()


async def test_a_browsers_fetch_with_a_latin1_header_names_the_user(
    sqlite_server: Server, browsing: Browsing
) -> None:
    """Chromium sends `X-Username: lucía` as the Latin-1 byte 0xED: the server reads lucía."""
    server = sqlite_server
    page = (await browsing.person("lucía")).page
    await page.goto(f"{server.url}/")
    answers = await page.evaluate(
        """async () => {
            const post = await fetch("/api/messages", {
                method: "POST",
                headers: {"Content-Type": "application/json", "X-Username": "lucía"},
                body: JSON.stringify({chat_id: 1, contenido: "hola"}),
            });
            const me = await fetch("/api/me", {headers: {"X-Username": "LUCÍA"}});
            const [posted, found] = [await post.json(), await me.json()];
            return [post.status, posted.message.username, me.status, found.user.username];
        }"""
    )
    assert answers == [201, "lucía", 200, "lucía"]
    browsing.assert_no_page_errors()
