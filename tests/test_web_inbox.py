"""The admin's inbox in a real headless Chromium: the chat list loads page by page as it is
scrolled, a new message moves a chat that was not loaded yet to the top, and the search box
finds people and words, marking what it found as text (never as HTML)."""

from __future__ import annotations

import aiohttp
import pytest
from playwright.async_api import expect

from chat_server import service
from chat_server.store import store_key

from .test_web_client import WAIT_MS, Browsing, Server, call, log_in, post
from .test_web_page import browser, browsing, http, server  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

CUSTOMERS = 130  # General and 49 DMs on the first page, then two more pages


async def customers(running: Server) -> dict[str, int]:
    """Customers made as their first message makes them, each with one message: name -> DM."""
    assert running.runner is not None
    app = running.runner.app
    store = app[store_key]
    admin = await store.get_user(username="admin")
    assert admin is not None
    dms = {}
    for n in range(CUSTOMERS):
        name = f"cliente{n:03d}"
        user, _ = await service.ensure_user(app, name)
        dm, _ = await store.get_or_create_dm(admin, user)
        await store.add_message(dm.id, user, f"hola, soy {name}")
        dms[name] = dm.id
    return dms


async def test_the_inbox_scrolls_page_by_page_moves_new_messages_up_and_searches(
    server: Server,  # noqa: F811
    http: aiohttp.ClientSession,  # noqa: F811
    browsing: Browsing,  # noqa: F811
) -> None:
    dms = await customers(server)
    admin = await browsing.person("admin")
    await log_in(admin, server)
    page = admin.page
    items = page.locator("#chats .chat")
    await expect(items).to_have_count(50, timeout=WAIT_MS)  # the first page only

    # The oldest customer's chat is on the last page: their new message brings it to the top.
    oldest = dms["cliente000"]
    await post(http, server.url, oldest, "¿hay alguien?", "cliente000")
    await expect(items.nth(1)).to_have_attribute("data-chat-id", str(oldest), timeout=WAIT_MS)
    await expect(items.nth(1).locator(".insignia")).to_have_text("2")

    # Scrolling to the end loads the next pages, each chat once.
    while await items.count() < CUSTOMERS + 1:
        before = await items.count()
        await page.locator("#chats").evaluate("list => { list.scrollTop = list.scrollHeight; }")
        await expect(items).not_to_have_count(before, timeout=WAIT_MS)
    ids = await items.evaluate_all("buttons => buttons.map((b) => b.dataset.chatId)")
    assert len(ids) == len(set(ids)) == CUSTOMERS + 1

    # People by the start of their name, the start marked.
    box = page.locator("#buscar")
    await box.fill("CLIENTE12")
    results = page.locator("#resultados")
    await expect(results).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#chats")).to_be_hidden()
    people = results.locator(".resultado")
    await expect(people).to_have_count(10, timeout=WAIT_MS)
    await expect(people.first.locator("mark")).to_have_text("cliente120")

    # Words of messages: found, marked as text; the message's own markup stays text.
    message = await post(http, server.url, dms["cliente050"], "<b>urgente</b> la factura", "cliente050")
    await box.fill("urgente")
    found = results.locator(".resultado", has_text="urgente")
    await expect(found).to_have_count(1, timeout=WAIT_MS)
    await expect(found.locator("mark")).to_have_text("urgente")
    await expect(found.locator(".vista")).to_have_text("cliente050: <b>urgente</b> la factura")
    assert await results.locator("b").count() == 0
    await found.click()
    await expect(page.locator("#composer")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#lista-mensajes")).to_contain_text("<b>urgente</b> la factura")
    await expect(box).to_have_value("")
    await expect(page.locator("#chats")).to_be_visible()
    answer = await call(http, "GET", f"{server.url}/api/search", params={"q": "urgente", "username": "admin"})
    assert [m["id"] for m in answer["messages"]] == [message]
    browsing.assert_no_page_errors()
