"""The page shows copied legacy messages among new ones by their time, and pages back to them.

Copied rows have ids below 0 (chat_server/migrate_legacy.py): a page that ordered by id, or paged
back from its lowest id, would put them in the wrong place or stop before them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from datetime import timedelta

import aiohttp
import pytest
from playwright.async_api import expect

from chat_server.migrate_legacy import backfill_key
from chat_server.models import utc_now

from .chat_client import WAIT
from .test_web_client import (  # noqa: F401 - fixtures
    WAIT_MS,
    Browsing,
    Server,
    browsing,
    dm_with_admin,
    http,
    log_in,
    open_chat,
    post,
    sqlite_server,
)

pytestmark = pytest.mark.browser


def sql_time(delta: timedelta) -> str:
    return (utc_now() + delta).strftime("%Y-%m-%d %H:%M:%S")


async def test_legacy_messages_sit_among_new_ones_by_time_and_scrolling_up_reaches_them(
    sqlite_server: Server,  # noqa: F811 - fixture
    http: aiohttp.ClientSession,  # noqa: F811 - fixture
    browsing: Browsing,  # noqa: F811 - fixture
) -> None:
    server = sqlite_server
    dm = await dm_with_admin(http, server, "ana")
    new = [f"nuevo {n}" for n in range(55)]
    for text in new:
        await post(http, server.url, dm, text, "ana")
    # The legacy app's rows: five older than everything, one dated after the newest message,
    # so the first page holds a copied row whose id is the lowest of the page.
    await server.stop()
    old = [f"antiguo {n}" for n in range(5)]
    rows = [
        (n + 1, "ana", text, sql_time(timedelta(days=-10, minutes=n)), "cliente", "admin")
        for n, text in enumerate(old)
    ]
    rows.append((6, "ana", "más tarde", sql_time(timedelta(hours=1)), "cliente", "admin"))
    path = server.settings.database_url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as conn:
        conn.executemany(
            "INSERT INTO mensajes (id, usuario, mensaje, timestamp, tipo_usuario, destinatario)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.commit()
    await server.start()
    assert server.runner is not None
    await asyncio.wait_for(server.runner.app[backfill_key].done.wait(), WAIT)

    admin = await browsing.person("admin")
    await log_in(admin, server)
    await open_chat(admin, dm)
    texts = admin.page.locator(".msg .texto")
    await expect(texts).to_have_count(50)
    assert await texts.all_text_contents() == [*new[-49:], "más tarde"]
    await admin.page.locator("#mensajes").evaluate("(box) => { box.scrollTop = 0; }")
    await expect(texts).to_have_count(61, timeout=WAIT_MS)
    assert await texts.all_text_contents() == [*old, *new, "más tarde"]
    browsing.assert_no_page_errors()
