"""Take the README's screenshots of the browser client: `.venv/bin/python scripts/screenshot.py`.

Serves the app on a throwaway SQLite database, fills it with a few conversations spanning
yesterday and today, keeps two users online, and photographs in headless Chromium (Debian's
package): the admin's inbox on a desktop (docs/screenshot.png: unread counts, who is online,
someone typing, day separators, "Visto") and a customer's conversation on a phone-sized screen
(docs/screenshot-phone.png: the admin typing).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from playwright.async_api import Page, async_playwright, expect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chat_server.app import create_app  # noqa: E402
from chat_server.models import LIMA  # noqa: E402
from chat_server.settings import Settings  # noqa: E402
from chat_server.store import Store, store_key  # noqa: E402
from chat_server.store.base import _sql_time  # noqa: E402
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

WAIT_MS = 15_000

# (author, chat: "general" or the user whose DM with admin it is, text, days ago, Lima time)
CONVERSATION = [
    ("ana", "ana", "Hola, ¿a qué hora abren mañana?", 1, "19:05"),
    ("admin", "ana", "¡Hola, Ana! Mañana abrimos a las 9:00.", 1, "19:12"),
    ("ana", "general", "¡Buenos días a todos!", 0, "08:40"),
    ("beto", "general", "Buenos días. ¿Alguien sabe si hoy atienden hasta tarde?", 0, "08:52"),
    ("admin", "general", "Hoy atendemos hasta las 8 p. m.", 0, "08:55"),
    ("carla", "carla", "Hola, quería cambiar la dirección de entrega de mi pedido.", 0, "09:03"),
    ("ana", "ana", "Perfecto, paso temprano. ¿Puedo pagar con Yape?", 0, "09:10"),
    ("admin", "ana", "Sí, aceptamos Yape, Plin y tarjetas.", 0, "09:11"),
    ("ana", "ana", "¡Gracias! Nos vemos en un rato.", 0, "09:12"),
    ("admin", "ana", "Te esperamos. ¡Que tengas buen día!", 0, "09:14"),
    ("beto", "beto", "Buenas tardes, mi pedido #4821 no ha llegado.", 0, "09:20"),
    ("beto", "beto", "¿Me pueden ayudar? Lo pedí el lunes.", 0, "09:21"),
    ("diego", "diego", "¿Tienen delivery a Miraflores?", 0, "09:26"),
]


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        app = create_app(Settings(database_url=f"sqlite:///{folder}/chat.sqlite3", secret="screenshot"))
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as http:
            try:
                dms = await _fill(http, base, app[store_key])
                # Ana and Carla have the page open: online in the admin's inbox. (The server
                # ends these streams when it stops, before its database closes.)
                for name in ("ana", "carla"):
                    await http.get(f"{base}/api/stream", params={"username": name})
                await _photograph(http, base, dms)
            finally:
                await runner.cleanup()


async def _fill(http: aiohttp.ClientSession, base: str, store: Store) -> dict[str, int]:
    """The conversation, stored at its times (the API only stores the present), and read: the
    admin up to each of his answers, Ana up to the end."""
    dms: dict[str, int] = {}
    for name in ("carla", "diego", "beto", "ana"):
        await _call(http, "POST", f"{base}/api/login", {"username": name})
        payload: dict[str, object] = {"username": name, "with_username": "admin"}
        dms[name] = int((await _call(http, "POST", f"{base}/api/chats/dm", payload))["chat"]["id"])
    general = int((await _call(http, "GET", f"{base}/api/chats?username=admin"))["chats"][0]["id"])
    await _call(http, "POST", f"{base}/api/login", {"username": "admin"})  # General read from here
    today = datetime.now(LIMA).date()
    for author, where, text, days_ago, clock in CONVERSATION:
        chat_id = general if where == "general" else dms[where]
        user = await store.get_user(username=author)
        assert user is not None
        moment = datetime.combine(today - timedelta(days=days_ago), time.fromisoformat(clock), LIMA)
        row = (chat_id, user.id, text, _sql_time(moment))
        async with store.connection() as db:
            (message_id,) = await store.insert_messages(db, [row])
        readers = ["admin"] if author == "admin" else []
        if where == "ana":
            readers.append("ana")
        for reader in readers:
            read: dict[str, object] = {"username": reader, "last_read_id": message_id}
            await _call(http, "POST", f"{base}/api/chats/{chat_id}/read", read)
    return dms


async def _photograph(http: aiohttp.ClientSession, base: str, dms: dict[str, int]) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            desktop = await browser.new_page(viewport={"width": 1100, "height": 640})
            await _log_in(desktop, base, "admin")
            await desktop.click(f'.chat[data-chat-id="{dms["ana"]}"]')
            await expect(desktop.locator(".msg")).to_have_count(6, timeout=WAIT_MS)
            await expect(desktop.locator(".visto")).to_have_count(1, timeout=WAIT_MS)
            await _call(http, "POST", f"{base}/api/chats/{dms['carla']}/typing", {"username": "carla"})
            typing = desktop.locator(f'.chat[data-chat-id="{dms["carla"]}"] .escribiendo')
            await expect(typing).to_have_count(1, timeout=WAIT_MS)
            await desktop.screenshot(path=str(ROOT / "docs" / "screenshot.png"))

            phone = await browser.new_page(viewport={"width": 390, "height": 700}, is_mobile=True)
            await _log_in(phone, base, "ana")
            await phone.click(f'.chat[data-chat-id="{dms["ana"]}"]')
            await expect(phone.locator(".msg")).to_have_count(6, timeout=WAIT_MS)
            await _call(http, "POST", f"{base}/api/chats/{dms['ana']}/typing", {"username": "admin"})
            await expect(phone.locator("#subtitulo")).to_have_text("escribiendo…", timeout=WAIT_MS)
            await phone.screenshot(path=str(ROOT / "docs" / "screenshot-phone.png"))
        finally:
            await browser.close()


async def _call(http: aiohttp.ClientSession, method: str, url: str, body: object = None) -> Any:
    async with http.request(method, url, json=body) as resp:
        resp.raise_for_status()
        return await resp.json()


async def _log_in(page: Page, base: str, username: str) -> None:
    await page.goto(f"{base}/")
    await page.fill("#nombre", username)
    await page.click("#entrar")
    await expect(page.locator("#conexion")).to_have_attribute("data-state", "connected", timeout=WAIT_MS)


if __name__ == "__main__":
    asyncio.run(main())
