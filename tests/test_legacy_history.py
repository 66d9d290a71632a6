"""Legacy history without a manual step: a start copies the legacy table in the background, and
history lists legacy and new messages of a chat in time order, whichever was stored first.

On MariaDB (a database made from the seed's SQL) and on SQLite. A test waits for the copy on its
completion signal (`LegacyBackfill.done`), never on a sleep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from chat_server.app import create_app
from chat_server.migrate_legacy import LegacyBackfill, backfill_key
from chat_server.models import utc_now
from chat_server.settings import Settings
from chat_server.store import open_store

from .chat_client import WAIT, AiohttpClient, ChatClient
from .databases import throwaway_database
from .test_migrate_legacy import LegacyDb, legacy_db, seed_made_database  # noqa: F401 - fixture

Start = Callable[[str], Awaitable[ChatClient]]


@pytest.fixture
def start(aiohttp_client: AiohttpClient) -> Start:
    """A server on the database, once its background copy of the legacy table is over."""

    async def started(url: str) -> ChatClient:
        app = create_app(Settings(database_url=url, secret="test-secret"))
        client = ChatClient(await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar()))
        await asyncio.wait_for(client.app[backfill_key].done.wait(), WAIT)
        return client

    return started


def sql_time(delta: timedelta) -> str:
    return (utc_now() + delta).strftime("%Y-%m-%d %H:%M:%S")


async def test_legacy_rows_written_after_new_messages_show_in_time_order_and_are_never_new(
    legacy_db: LegacyDb,  # noqa: F811 - fixture
    start: Start,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The new server runs first: messages are posted and a stream has seen them.
    first = await start(legacy_db.url)
    general = first.store.general_id
    new = [await first.post(general, f"nuevo {i}", "ana") for i in range(3)]
    dm = await first.dm_id("ana", "admin")
    new_dm = await first.post(dm, "nuevo privado", "ana")
    await first.http.close()

    # Then the legacy app's rows arrive (or had never been copied): older and newer ones.
    legacy_db.insert_legacy(
        [
            (1, "pedro", "antes de todo", sql_time(-timedelta(days=30)), "cliente", None),
            (2, "ana", "privado antiguo", sql_time(-timedelta(days=29)), "cliente", "admin"),
            (3, "pedro", "después de todo", sql_time(timedelta(hours=1)), "cliente", None),
            (4, "pedro", "también antiguo", sql_time(-timedelta(days=30)), "cliente", None),
        ]
    )
    caplog.set_level(logging.INFO, logger="chat_server.migrate_legacy")
    second = await start(legacy_db.url)

    history = await second.history(general, username="ana")
    assert [m["contenido"] for m in history] == [
        "antes de todo",
        "también antiguo",
        "nuevo 0",
        "nuevo 1",
        "nuevo 2",
        "después de todo",
    ]
    legacy_ids = [m["id"] for m in history if not m["contenido"].startswith("nuevo")]
    assert all(i < 0 for i in legacy_ids)
    assert [m["contenido"] for m in await second.history(dm, username="ana")] == [
        "privado antiguo",
        "nuevo privado",
    ]
    # Paging back two at a time, across both kinds and below id 0, misses and repeats nothing.
    pages: list[dict[str, Any]] = []
    cursor: dict[str, Any] = {}
    while page := await second.history(general, username="ana", limit=2, **cursor):
        pages[:0] = page
        cursor = {"before_id": page[0]["id"]}
    assert pages == history

    # Copied rows are history, not news: a resume from the last new id replays none of them,
    # polling after it finds none, and none is unread.
    stream = await second.open_stream({"username": "ana"}, {"Last-Event-ID": str(new_dm["id"])})
    posted = await second.post(general, "nuevo 3", "pedro")
    assert [m["id"] for m in await stream.messages(1)] == [posted["id"]]
    stream.close()
    assert [m["id"] for m in await second.history(general, after_id=new[-1]["id"])] == [posted["id"]]
    unread = {c["id"]: c["unread"] for c in await second.chats("ana")}
    assert unread[general] == 1  # pedro's "nuevo 3"; none of the copied rows

    # Progress went to the log and to /metrics.
    assert any("legacy history: read 4, copied 4" in r.getMessage() for r in caplog.records)
    metrics = await (await second.http.get("/metrics")).text()
    assert "chat_legacy_rows_copied_total 4.0" in metrics
    assert "chat_legacy_rows_left 0.0" in metrics
    assert "chat_legacy_copy_done 1.0" in metrics


async def test_servers_starting_together_copy_each_row_once(start: Start) -> None:
    with seed_made_database() as db:
        db.insert_legacy(
            [
                (i, f"u{i % 7}", f"fila {i}", f"2025-03-01 14:{i // 60:02d}:{i % 60:02d}", "cliente", None)
                for i in range(1, 301)
            ]
        )
        clients = await asyncio.gather(*(start(db.url) for _ in range(3)))
        copied = [c.app[backfill_key].migration for c in clients]
        assert sum(m.report.copied for m in copied if m is not None) == 300
        assert db.fetchall("SELECT COUNT(*), COUNT(DISTINCT contenido) FROM mensajes_v2")[0] == (300, 300)
        history = await clients[0].history(clients[0].store.general_id, limit=200)
        assert [m["contenido"] for m in history] == [f"fila {i}" for i in range(101, 301)]


async def test_with_only_copied_rows_streams_start_from_zero(
    legacy_db: LegacyDb,  # noqa: F811 - fixture
    start: Start,
) -> None:
    first = await start(legacy_db.url)  # makes the tables on SQLite
    await first.http.close()
    legacy_db.insert_legacy([(1, "pedro", "antiguo", "2025-03-01 14:00:00", "cliente", None)])
    client = await start(legacy_db.url)
    general = client.store.general_id
    assert [m["id"] < 0 for m in await client.history(general)] == [True]
    # The newest "new" id is 0, not the copied row's: a resume from 0 replays nothing old.
    assert await client.store.latest_message_id() == 0
    stream = await client.open_stream({"chat_id": general}, {"Last-Event-ID": "0"})
    posted = await client.post(general, "primero nuevo", "ana")
    assert [m["contenido"] for m in await stream.messages(1)] == ["primero nuevo"]
    assert posted["id"] > 0
    stream.close()


async def test_the_copy_lock_is_per_database() -> None:
    """Named locks are server-wide: servers on other databases of one MariaDB must not wait."""
    with throwaway_database() as url, throwaway_database() as other_url:
        stores = [open_store(u) for u in (url, url, other_url)]
        for store in stores:
            await store.start()
        try:
            holder, same_db, other_db = stores
            async with (
                holder.exclusive(LegacyBackfill.LOCK) as held,
                same_db.exclusive(LegacyBackfill.LOCK) as held_too,
                other_db.exclusive(LegacyBackfill.LOCK) as held_elsewhere,
            ):
                assert (held, held_too, held_elsewhere) == (True, False, True)
            async with same_db.exclusive(LegacyBackfill.LOCK) as held_after:
                assert held_after  # released with the block
        finally:
            for store in stores:
                await store.close()
