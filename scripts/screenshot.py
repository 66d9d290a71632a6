"""Take the README's screenshots of the browser client: `.venv/bin/python scripts/screenshot.py`.

Serves the app on a throwaway SQLite database, fills it with a few conversations, keeps two
users online, and photographs the admin's inbox in headless Chromium (Debian's package) on a
desktop and on a phone-sized screen: docs/screenshot.png and docs/screenshot-phone.png.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web
from playwright.async_api import Page, async_playwright, expect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chat_server.app import create_app  # noqa: E402
from chat_server.settings import Settings  # noqa: E402
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

WAIT_MS = 15_000

# (author, chat: "general" or the user whose DM with admin it is, text)
CONVERSATION = [
    ("ana", "general", "¡Buenos días a todos!"),
    ("beto", "general", "Buenos días. ¿Alguien sabe si hoy atienden hasta tarde?"),
    ("admin", "general", "Hoy atendemos hasta las 8 p. m."),
    ("carla", "carla", "Hola, quería cambiar la dirección de entrega de mi pedido."),
    ("ana", "ana", "Hola, ¿a qué hora abren mañana?"),
    ("admin", "ana", "¡Hola, Ana! Mañana abrimos a las 9:00."),
    ("ana", "ana", "Perfecto, paso temprano. ¿Puedo pagar con Yape?"),
    ("admin", "ana", "Sí, aceptamos Yape, Plin y tarjetas."),
    ("ana", "ana", "¡Gracias!"),
    ("beto", "beto", "Buenas tardes, mi pedido #4821 no ha llegado."),
    ("beto", "beto", "¿Me pueden ayudar? Lo pedí el lunes."),
    ("diego", "diego", "¿Tienen delivery a Miraflores?"),
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
                dms = await _fill(http, base)
                # Ana and Carla have the page open: online in the admin's inbox. (The server
                # ends these streams when it stops, before its database closes.)
                for name in ("ana", "carla"):
                    await http.get(f"{base}/api/stream", params={"username": name})
                await _photograph(base, dms["ana"])
            finally:
                await runner.cleanup()


async def _fill(http: aiohttp.ClientSession, base: str) -> dict[str, int]:
    dms: dict[str, int] = {}
    for name in ("carla", "diego", "beto", "ana"):
        async with http.post(f"{base}/api/login", json={"username": name}) as resp:
            resp.raise_for_status()
        payload: dict[str, object] = {"username": name, "with_username": "admin"}
        async with http.post(f"{base}/api/chats/dm", json=payload) as resp:
            dms[name] = int((await resp.json())["chat"]["id"])
    async with http.get(f"{base}/api/chats", params={"username": "admin"}) as resp:
        general = int((await resp.json())["chats"][0]["id"])
    for author, where, text in CONVERSATION:
        chat_id = general if where == "general" else dms[where]
        message = {"chat_id": chat_id, "contenido": text, "username": author}
        async with http.post(f"{base}/api/messages", json=message) as resp:
            resp.raise_for_status()
            sent = (await resp.json())["message"]
        if author == "admin":  # the admin answered from the page: what came before is read
            read: dict[str, object] = {"username": "admin", "last_read_id": sent["id"]}
            async with http.post(f"{base}/api/chats/{chat_id}/read", json=read) as resp:
                resp.raise_for_status()
    return dms


async def _photograph(base: str, open_dm: int) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            desktop = await browser.new_page(viewport={"width": 1100, "height": 620})
            await _log_in(desktop, base, "admin")
            await desktop.click(f'.chat[data-chat-id="{open_dm}"]')
            await expect(desktop.locator(".msg")).to_have_count(5, timeout=WAIT_MS)
            await expect(desktop.locator(f'.chat[data-chat-id="{open_dm}"] .insignia')).to_have_count(0)
            await desktop.locator("#texto").fill("Te esperamos. ¡Que tengas buen día!")
            await desktop.screenshot(path=str(ROOT / "docs" / "screenshot.png"))

            phone = await browser.new_page(viewport={"width": 390, "height": 700}, is_mobile=True)
            await _log_in(phone, base, "admin")
            await phone.screenshot(path=str(ROOT / "docs" / "screenshot-phone.png"))
        finally:
            await browser.close()


async def _log_in(page: Page, base: str, username: str) -> None:
    await page.goto(f"{base}/")
    await page.fill("#nombre", username)
    await page.click("#entrar")
    await expect(page.locator("#conexion")).to_have_attribute("data-state", "connected", timeout=WAIT_MS)


if __name__ == "__main__":
    asyncio.run(main())
