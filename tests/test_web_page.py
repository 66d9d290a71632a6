"""What people chatting expect of the page, in a real headless Chromium: "escribiendo…", "Visto",
the unread total in the title and desktop notifications, day separators in Lima time, a
connection state that is never stale, and the small things (Spanish validation, no console error).

One browser for the module (launching it is the slow part); each test has its own server on
the embedded store (the page is the subject here, not the store) and its own browser contexts.
Screenshots of every page as the test left it go to artifacts/web/.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import APIResponse, Browser, ConsoleMessage, Route, async_playwright, expect

from chat_server.models import LIMA
from chat_server.store import store_key
from chat_server.store.base import _sql_time

from .test_browser import CHROMIUM, CHROMIUM_ARGS, _require_chromium
from .test_web_client import (
    ARTIFACTS,
    WAIT_MS,
    Browsing,
    Person,
    Server,
    call,
    chat,
    dm_with_admin,
    expect_connection,
    log_in,
    open_chat,
    post,
    send,
    serving,
)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

# Page Visibility, under the test's control: `window.setHidden(true)` as if the person switched tabs.
VISIBILITY = """
window.setHidden = (hidden) => {
  const state = hidden ? "hidden" : "visible";
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => state });
  Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
  document.dispatchEvent(new Event("visibilitychange"));
};
"""
# Every Notification the page makes, recorded (the real one still runs), and every permission request.
NOTIFICATIONS = """
window.notes = [];
window.permissionAsked = 0;
const RealNotification = window.Notification;
window.Notification = class extends RealNotification {
  constructor(title, options) {
    super(title, options);
    window.notes.push({ title, body: (options || {}).body, note: this });
  }
  static requestPermission() {
    window.permissionAsked += 1;
    return RealNotification.requestPermission();
  }
};
"""
WEEKDAYS = ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo")
MONTHS = ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
          "octubre", "noviembre", "diciembre")  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    _require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def browsing(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Browsing]:
    test = request.node.name
    for stale in ARTIFACTS.glob(f"{test}-*.png"):
        stale.unlink()
    session = Browsing(browser, test)
    try:
        yield session
    finally:
        await session.shoot()
        for context in {person.context for person in session.people}:
            with contextlib.suppress(Exception):
                await context.close()


@pytest_asyncio.fixture(loop_scope="module")
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with serving(f"sqlite:///{tmp_path}/chat.sqlite3") as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def console_errors(person: Person) -> list[str]:
    """Collects the page's console errors (a failed request is one) from now on."""
    errors: list[str] = []

    def keep(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    person.page.on("console", keep)
    return errors


async def insert_at(server: Server, chat_id: int, sender: str, text: str, moment: datetime) -> int:
    """A message stored as if sent at `moment` (the API only stores the present)."""
    assert server.runner is not None
    store = server.runner.app[store_key]
    user = await store.get_user(username=sender)
    assert user is not None
    async with store.connection() as db:
        (message_id,) = await store.insert_messages(db, [(chat_id, user.id, text, _sql_time(moment))])
    return message_id


def spanish_day(moment: datetime, today: datetime) -> str:
    """What the page should call a day, computed here on our own (Lima time)."""
    day, now = moment.astimezone(LIMA).date(), today.astimezone(LIMA).date()
    if day == now:
        return "Hoy"
    if day == now - timedelta(days=1):
        return "Ayer"
    label = f"{WEEKDAYS[day.weekday()]} {day.day} de {MONTHS[day.month - 1]}"
    return label if day.year == now.year else f"{label} de {day.year}"


async def customer_in_dm(
    browsing: Browsing, server: Server, http: aiohttp.ClientSession, name: str
) -> tuple[Person, int]:
    """A customer on a phone, logged in, with their DM with the admin open."""
    dm = await dm_with_admin(http, server, name)
    customer = await browsing.person(name, phone=True)
    await log_in(customer, server)
    await open_chat(customer, dm)
    return customer, dm


def full_date(moment: datetime) -> str:
    lima = moment.astimezone(LIMA)
    return f"{WEEKDAYS[lima.weekday()]} {lima.day} de {MONTHS[lima.month - 1]} de {lima.year}, {lima:%H:%M}"


# -- the tests -------------------------------------------------------------------------


async def test_typing_shows_escribiendo_until_they_stop_or_their_message_comes(
    server: Server, http: aiohttp.ClientSession, browsing: Browsing
) -> None:
    tina, dm = await customer_in_dm(browsing, server, http, "tina")
    admin = await browsing.person("admin")
    await log_in(admin, server)
    await expect_connection(admin, "connected")
    preview = chat(admin, dm, ".vista")

    # Tina types: the admin's list says so (the chat is not even open).
    await tina.page.locator("#texto").press_sequentially("hola, quería")
    await expect(preview).to_have_text("escribiendo…", timeout=WAIT_MS)
    # She stops: it goes by itself (5 s after her last notice).
    await expect(preview).not_to_have_text("escribiendo…", timeout=8_000)

    # Open, it shows under the chat's name too; her message clears it at once.
    await open_chat(admin, dm)
    await expect(admin.page.locator("#subtitulo")).not_to_have_text("escribiendo…")
    await tina.page.locator("#texto").press_sequentially(" preguntar algo")
    await expect(admin.page.locator("#subtitulo")).to_have_text("escribiendo…", timeout=WAIT_MS)
    await tina.page.locator("#texto").press("Enter")
    last = admin.page.locator(".msg .texto").last
    await expect(last).to_have_text("hola, quería preguntar algo", timeout=WAIT_MS)
    # In the same moment as the message: checked in one look at the page, no waiting.
    shown = await admin.page.evaluate(
        "() => [document.querySelector('#subtitulo').textContent,"
        " document.querySelectorAll('.escribiendo').length]"
    )
    assert shown == ["En línea", 0]
    # The admin's own typing is never shown to the admin.
    await admin.page.locator("#texto").press_sequentially("un momento")
    await expect(tina.page.locator("#subtitulo")).to_have_text("escribiendo…", timeout=WAIT_MS)
    await expect(admin.page.locator(".escribiendo")).to_have_count(0)
    browsing.assert_no_page_errors()


async def test_the_sender_sees_visto_live_once_the_partner_has_read(
    server: Server, http: aiohttp.ClientSession, browsing: Browsing
) -> None:
    vale, dm = await customer_in_dm(browsing, server, http, "vale")
    await send(vale, "primero")
    await send(vale, "segundo")
    ids = [int(i) for i in await vale.page.locator(".msg").evaluate_all("(l) => l.map((m) => m.dataset.id)")]
    admin = await browsing.person("admin")
    await log_in(admin, server)
    await expect(chat(admin, dm, ".insignia")).to_have_text("2")
    await expect(vale.page.locator(".visto")).to_have_count(0)

    await open_chat(admin, dm)
    seen = vale.page.locator(".visto")
    await expect(seen).to_have_count(1, timeout=WAIT_MS)
    await expect(vale.page.locator(f'.msg[data-id="{ids[1]}"] .visto')).to_have_text("Visto")

    # A new message is not seen until the admin's page reads it (hidden: it does not).
    await admin.page.evaluate(VISIBILITY + "window.setHidden(true)")
    third = await post(http, server.url, dm, "tercero", "vale")
    await expect(chat(admin, dm, ".insignia")).to_have_text("1")
    await expect(vale.page.locator(f'.msg[data-id="{third}"]')).to_have_count(1)
    await expect(vale.page.locator(f'.msg[data-id="{ids[1]}"] .visto')).to_have_count(1)
    await admin.page.evaluate("window.setHidden(false)")
    await expect(vale.page.locator(f'.msg[data-id="{third}"] .visto')).to_have_text("Visto", timeout=WAIT_MS)
    await expect(seen).to_have_count(1)
    # From the chat list after a reload too (the partner's last_read_id).
    await vale.page.reload()
    await expect(vale.page.locator(f'.msg[data-id="{third}"] .visto')).to_have_text("Visto", timeout=WAIT_MS)
    browsing.assert_no_page_errors()


async def test_a_hidden_page_counts_in_its_title_and_notifies_others_messages_once(
    server: Server, http: aiohttp.ClientSession, browsing: Browsing
) -> None:
    dm = await dm_with_admin(http, server, "nora")
    admin = await browsing.person("admin")
    await admin.context.grant_permissions(["notifications"], origin=server.url)
    await admin.page.add_init_script(VISIBILITY + NOTIFICATIONS)
    await log_in(admin, server)
    await expect_connection(admin, "connected")
    await expect(admin.page).to_have_title("Chat")
    assert await admin.page.evaluate("window.permissionAsked") == 0  # never on load

    # The chat open and visible: read at once, no notification. One's own messages neither.
    await open_chat(admin, dm)
    await post(http, server.url, dm, "¿hola?", "nora")
    await expect(admin.page.locator(".msg")).to_have_count(1)
    await send(admin, "Hola Nora, dime.")
    await expect(admin.page).to_have_title("Chat")

    # Hidden (another tab in front): her message counts in the title and raises one notification.
    await admin.page.evaluate("window.setHidden(true)")
    await send(admin, "¿Sigues ahí?")  # own, while hidden: nothing
    await post(http, server.url, dm, "Sí, aquí estoy: mi pedido no llegó", "nora")
    await expect(admin.page).to_have_title("(1) Chat", timeout=WAIT_MS)
    notes = await admin.page.evaluate("window.notes.map((n) => [n.title, n.body])")
    assert notes == [["nora", "Sí, aquí estoy: mi pedido no llegó"]]
    await post(http, server.url, dm, "¿Me ayudas?", "nora")
    await expect(admin.page).to_have_title("(2) Chat", timeout=WAIT_MS)
    assert await admin.page.evaluate("window.notes.length") == 2

    # Clicking it opens that chat: the admin goes to General first, then clicks.
    general = (await call(http, "GET", f"{server.url}/api/chats", params={"username": "admin"}))["chats"][0]
    await open_chat(admin, general["id"])
    await admin.page.evaluate("window.setHidden(false); window.notes[1].note.onclick()")
    await expect(admin.page.locator("#titulo")).to_have_text("nora")
    await expect(admin.page).to_have_title("Chat", timeout=WAIT_MS)
    assert await admin.page.evaluate("window.notes.length") == 2
    browsing.assert_no_page_errors()


async def test_a_read_marker_counted_before_a_newer_message_does_not_take_it_off_the_count(
    server: Server, http: aiohttp.ClientSession, browsing: Browsing
) -> None:
    """The page marks a chat read; the server counts the unread then, but its answer arrives
    after a newer message of the partner came (seen in CI: the tab title lost its count). That
    message stays counted."""
    dm = await dm_with_admin(http, server, "olga")
    admin = await browsing.person("admin")
    await admin.page.add_init_script(VISIBILITY)
    answered: asyncio.Future[tuple[Route, APIResponse]] = asyncio.get_running_loop().create_future()

    async def hold_the_answer(route: Route) -> None:
        answered.set_result((route, await route.fetch()))  # the server counts now

    await admin.page.route("**/api/chats/*/read", hold_the_answer)
    await log_in(admin, server)
    await expect_connection(admin, "connected")
    await open_chat(admin, dm)
    await post(http, server.url, dm, "primero", "olga")  # read at once: the page marks it read
    route, answer = await asyncio.wait_for(answered, WAIT_MS / 1000)
    assert (await answer.json())["unread"] == 0
    await admin.page.evaluate("window.setHidden(true)")
    await post(http, server.url, dm, "segundo", "olga")
    await expect(admin.page).to_have_title("(1) Chat", timeout=WAIT_MS)
    async with admin.page.expect_response("**/api/chats/*/read") as late:
        await route.fulfill(response=answer)  # the answer of before "segundo" arrives now
    await (await late.value).finished()
    await post(http, server.url, dm, "tercero", "olga")
    await expect(admin.page).to_have_title("(2) Chat", timeout=WAIT_MS)
    browsing.assert_no_page_errors()


async def test_permission_is_asked_on_a_click_and_the_sound_choice_is_remembered(
    server: Server, browsing: Browsing
) -> None:
    ana = await browsing.person("ana")
    await ana.page.add_init_script(NOTIFICATIONS)
    await log_in(ana, server)
    offer = ana.page.locator("#permiso")
    await expect(offer).to_be_visible()  # not granted or denied yet: offered, not asked
    assert await ana.page.evaluate("window.permissionAsked") == 0
    await ana.page.click("#avisos")
    await ana.page.wait_for_function("window.permissionAsked === 1", timeout=WAIT_MS)

    sound = ana.page.locator("#sonido")
    await expect(sound).to_have_attribute("aria-pressed", "false")
    await sound.click()
    await expect(sound).to_have_attribute("aria-pressed", "true")
    await ana.page.reload()
    await expect(sound).to_have_attribute("aria-pressed", "true", timeout=WAIT_MS)

    # Someone who does not want to be asked says so once, and is not offered it again here.
    beto = await browsing.person("beto")
    await log_in(beto, server)
    await beto.page.click("#sin-avisos")
    await expect(beto.page.locator("#permiso")).to_be_hidden()
    await beto.page.reload()
    await expect(beto.page.locator("#yo")).to_have_text("beto", timeout=WAIT_MS)
    await expect(beto.page.locator("#permiso")).to_be_hidden()
    browsing.assert_no_page_errors()


async def test_day_separators_in_lima_time_and_the_full_date_on_hover(
    server: Server, http: aiohttp.ClientSession, browsing: Browsing
) -> None:
    dm = await dm_with_admin(http, server, "dora")
    now = datetime.now(UTC)
    moments = [now - timedelta(days=400), now - timedelta(days=6), now - timedelta(days=1), now]
    for n, moment in enumerate(moments):
        await insert_at(server, dm, "dora", f"mensaje {n}", moment)
    await insert_at(server, dm, "admin", "respuesta de hoy", now)
    admin = await browsing.person("admin")
    await log_in(admin, server)
    await open_chat(admin, dm)
    await expect(admin.page.locator(".msg")).to_have_count(5)
    expected = [spanish_day(m, now) for m in moments]
    assert expected[-2:] == ["Ayer", "Hoy"]
    await expect(admin.page.locator(".dia")).to_have_text(expected)
    # Each separator is right before the first message of its day.
    before = await admin.page.locator(".dia + .msg .texto").all_text_contents()
    assert before == ["mensaje 0", "mensaje 1", "mensaje 2", "mensaje 3"]
    # The full date and hour on hover, for every message.
    titles = await admin.page.locator(".msg time").evaluate_all("(all) => all.map((t) => t.title)")
    assert titles == [full_date(m) for m in [*moments, now]]
    browsing.assert_no_page_errors()


async def test_a_stopped_server_shows_in_the_open_conversation_and_greys_presence(
    server: Server, http: aiohttp.ClientSession, browsing: Browsing
) -> None:
    pia, dm = await customer_in_dm(browsing, server, http, "pia")
    admin = await browsing.person("admin")
    await log_in(admin, server)
    await open_chat(admin, dm)
    for person in (pia, admin):
        await expect(person.page.locator("#subtitulo")).to_have_text("En línea", timeout=WAIT_MS)
        await expect(person.page.locator("#conexion-chat")).to_be_hidden()
    await expect(chat(admin, dm, ".punto.en-linea")).to_have_count(1)

    await server.stop()
    for person in (pia, admin):
        state = person.page.locator("#conexion-chat")
        await expect(state).to_be_visible(timeout=WAIT_MS)
        await expect(state).not_to_have_attribute("data-state", "connected")
        await expect(person.page.locator("#subtitulo")).to_have_text("")
        await expect(person.page.locator(".punto.en-linea")).to_have_count(0)
    await expect(chat(admin, dm, ".punto")).to_have_attribute("title", "Sin conexión: estado desconocido")
    await browsing.shoot("server-away")

    await server.start()
    for person in (pia, admin):
        await expect_connection(person, "connected")
        await expect(person.page.locator("#conexion-chat")).to_be_hidden()
        await expect(person.page.locator("#subtitulo")).to_have_text("En línea", timeout=WAIT_MS)
    await expect(chat(admin, dm, ".punto.en-linea")).to_have_count(1, timeout=WAIT_MS)
    browsing.assert_no_page_errors()


async def test_the_small_things(server: Server, http: aiohttp.ClientSession, browsing: Browsing) -> None:
    general = (await call(http, "GET", f"{server.url}/api/chats", params={"username": "admin"}))["chats"][0]
    for n in range(60):  # history before the admin's first login
        await post(http, server.url, general["id"], f"historia {n}", "beto")
    admin = await browsing.person("admin")
    errors = console_errors(admin)
    page = admin.page
    await page.goto(f"{server.url}/")
    await expect(page.locator("#ingreso")).to_be_visible()

    # The page says what is wrong with a name, in Spanish, for empty and for spaces alike.
    assert await page.evaluate("document.getElementById('form-ingreso').noValidate")
    await page.click("#entrar")
    await expect(page.locator("#error-ingreso")).to_have_text("Escribe tu nombre.")
    await page.fill("#nombre", "   ")
    await page.click("#entrar")
    await expect(page.locator("#error-ingreso")).to_have_text("El nombre no puede ser solo espacios.")
    await log_in(admin, server)

    # The admin's General starts read at their first login, not at 60 of history.
    await expect(chat(admin, general["id"])).to_be_visible()
    await expect(chat(admin, general["id"], ".insignia")).to_have_count(0)
    dm = await dm_with_admin(http, server, "beto")
    await expect(chat(admin, dm, ".punto")).to_have_attribute("title", "Fuera de línea")
    await open_chat(admin, general["id"])
    await expect(page.locator("#historial")).to_have_text(
        "Desplázate hacia arriba para ver mensajes anteriores."
    )

    # "Salir" leaves an empty form; a new load without a session asks the server nothing.
    await page.click("#salir")
    await expect(page.locator("#ingreso")).to_be_visible()
    await expect(page.locator("#nombre")).to_have_value("")
    await page.reload()
    await expect(page.locator("#ingreso")).to_be_visible()
    await expect(page.locator("#nombre")).to_have_value("")
    assert errors == []
    browsing.assert_no_page_errors()
