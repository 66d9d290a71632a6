"""Group commit: a row the database refuses fails only its own post, never its neighbours'."""

from __future__ import annotations

import asyncio

import pytest

from chat_server.app import create_app
from chat_server.errors import ApiError
from chat_server.settings import Settings
from chat_server.store import Store

from .chat_client import AiohttpClient, ChatClient
from .databases import throwaway_database
from .statements import commands
from .test_lookups import dms_with_admin, started

# 17,000 four-byte characters: more bytes than MariaDB's TEXT column holds (65,535), so a strict
# server refuses the row. (Over HTTP the body limit, 64 KiB, refuses it first: the store is
# called directly, as the handlers call it.)
TOO_BIG = "😀" * 17_000


# MariaDB's own path (one multi-row INSERT ... RETURNING) and the MySQL 8 one (single-row
# INSERTs in one transaction).
@pytest.mark.parametrize("dialect", ["", "?dialect=mysql8"])
async def test_a_refused_row_fails_alone_in_its_batch(aiohttp_client: AiohttpClient, dialect: str) -> None:
    with throwaway_database() as url:
        settings = Settings(database_url=url + dialect, secret="s", max_message_chars=20_000)
        client = ChatClient(await aiohttp_client(create_app(settings)))
        await client.login("ana")
        ana = await client.store.get_user(username="ana")
        assert ana is not None
        general = client.store.general_id
        # Called together, before any INSERT is on its way: they go in one batch.
        texts = [f"vecino {i}" for i in range(5)] + [TOO_BIG] + [f"vecino {i}" for i in range(5, 10)]
        results = await asyncio.gather(
            *(client.store.add_message(general, ana, text) for text in texts), return_exceptions=True
        )
        refused = results.pop(5)
        assert isinstance(refused, ApiError)
        assert refused.status == 400
        assert all(not isinstance(r, BaseException) for r in results), results
        # The others are stored, once each, in the order they were sent.
        stored = [m["contenido"] for m in await client.history(general)]
        assert stored == [t for t in texts if t != TOO_BIG]
        assert [r.id for r in results if not isinstance(r, BaseException)] == sorted(
            r.id for r in results if not isinstance(r, BaseException)
        )
        await client.http.close()


async def inbox_rows(store: Store, chat_id: int) -> dict[int, tuple[int, int]]:
    """user -> (newest message id, unread) of a DM's inbox rows."""
    async with store.connection() as db:
        rows = await db.fetchall(
            "SELECT user_id, last_message_id, unread FROM chat_inbox WHERE chat_id = %s", (chat_id,)
        )
    return {int(user): (int(newest), int(unread)) for user, newest, unread in rows}


async def pooled_connections(store: Store) -> set[int]:
    """The server's thread ids of the store's connections."""
    async with store.connection() as db:
        rows = await db.fetchall("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE()")
    return {int(thread) for (thread,) in rows}


@pytest.mark.parametrize("dialect", ["", "?dialect=mysql8"])
async def test_a_dm_message_alone_in_its_batch_is_one_round_trip_with_its_inbox_rows(dialect: str) -> None:
    with throwaway_database() as url:
        async with started(url + dialect) as store:
            admin, [ana], [dm] = await dms_with_admin(store, 1)
            first = await store.add_message(dm.id, ana, "hola")  # users and chat are cached now
            with commands() as sent:
                second = await store.add_message(dm.id, ana, "¿hay alguien?")
            assert len(sent) == 1, sent  # BEGIN, INSERT, inbox upsert and COMMIT were 4
            assert await inbox_rows(store, dm.id) == {admin.id: (second.id, 2), ana.id: (second.id, 0)}
            stored = await store.messages_after(first.id - 1, 10)
            assert [(m.id, m.contenido) for m in stored] == [(first.id, "hola"), (second.id, "¿hay alguien?")]


@pytest.mark.parametrize("dialect", ["", "?dialect=mysql8"])
async def test_a_dm_message_whose_inbox_rows_are_refused_is_rolled_back_with_them(dialect: str) -> None:
    with throwaway_database() as url:
        async with started(url + dialect) as store:
            admin, [ana], [dm] = await dms_with_admin(store, 1)
            kept = await store.add_message(dm.id, ana, "hola")
            # The statement after the message's INSERT, in the same round trip, is refused.
            async with store.connection() as db:
                for event in ("INSERT", "UPDATE"):
                    await db.execute(
                        f"CREATE TRIGGER refuse_inbox_{event} BEFORE {event} ON chat_inbox FOR EACH ROW "
                        "SIGNAL SQLSTATE '22001' SET MYSQL_ERRNO = 1406"  # data too long
                    )
            connections = await pooled_connections(store)
            with pytest.raises(ApiError) as refused:
                await store.add_message(dm.id, ana, "rechazado")
            assert refused.value.status == 400
            # Rolled back on its connection, which stays in the pool (aiomysql's pool closes a
            # connection returned inside a transaction).
            assert await pooled_connections(store) == connections
            async with store.connection() as db:
                for event in ("INSERT", "UPDATE"):
                    await db.execute(f"DROP TRIGGER refuse_inbox_{event}")
            after = [await store.add_message(dm.id, ana, f"después {i}") for i in range(3)]
            stored = [m.contenido for m in await store.messages_after(kept.id - 1, 100)]
            assert stored == ["hola", *(f"después {i}" for i in range(3))]
            assert await inbox_rows(store, dm.id) == {admin.id: (after[-1].id, 4), ana.id: (after[-1].id, 0)}
