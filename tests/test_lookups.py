"""Shared look-ups (chat_server/store/loader.py): concurrent cache misses go to the database as
one query, the way a burst of stream connects asks on a process that made none of the chats."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from chat_server.errors import Unavailable
from chat_server.models import Chat, User
from chat_server.store import Store, open_store
from chat_server.store.sqlite import SqliteStore

from .statements import recording
from .tcp_proxy import TcpProxy
from .waiting import eventually


@contextlib.asynccontextmanager
async def started(url: str) -> AsyncIterator[Store]:
    store = open_store(url)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def sent(store: Store) -> AsyncIterator[list[str]]:
    """Every statement the store sends while the block runs (its driver's own record)."""
    if isinstance(store, SqliteStore):
        seen: list[str] = []
        assert store._conn is not None
        await store._conn.set_trace_callback(seen.append)
        try:
            yield seen
        finally:
            await store._conn.set_trace_callback(lambda _: None)
    else:
        with recording() as seen:
            yield seen


async def dms_with_admin(store: Store, count: int) -> tuple[User, list[User], list[Chat]]:
    admin = await store.get_user(username="admin")
    assert admin is not None
    users = [(await store.ensure_user(f"cliente{n}"))[0] for n in range(count)]
    return admin, users, [(await store.get_or_create_dm(admin, user))[0] for user in users]


async def test_concurrent_chat_misses_share_one_query(database_url: str) -> None:
    async with started(database_url) as writer:
        _, _, made = await dms_with_admin(writer, 5)
        general = await writer.general_chat()
        async with started(database_url) as reader:  # another process: none of them cached
            async with sent(reader) as statements:
                found = await asyncio.gather(
                    *(reader.get_chat(chat.id) for chat in made),
                    reader.get_chat(general.id),
                    reader.get_chat(made[-1].id + 1000),
                    reader.members_of([made[0].id, made[1].id]),
                )
            members = {chat.id: tuple(p.id for p in chat.participants) for chat in made[:2]}
            assert found == [*made, general, None, members]
            assert len(statements) == 1, statements
            async with sent(reader) as statements:
                assert await reader.get_chat(made[0].id) == made[0]
            assert statements == [], "a chat once read is kept"


async def test_concurrent_user_and_partner_lookups_share_one_query_each(database_url: str) -> None:
    async with started(database_url) as writer:
        admin, users, _ = await dms_with_admin(writer, 3)
        await writer.get_or_create_dm(users[0], users[1])
        async with started(database_url) as reader:
            async with sent(reader) as statements:
                by_id = await asyncio.gather(*(reader.get_user(user_id=u.id) for u in users))
            assert by_id == users
            assert len(statements) == 1, statements
            async with started(database_url) as other:
                async with sent(other) as statements:
                    by_name = await asyncio.gather(
                        *(other.get_user(username=u.username.upper()) for u in users),
                        other.get_user(username="nadie"),
                    )
                assert by_name == [*users, None]
                assert len(statements) == 1, statements
            async with sent(reader) as statements:
                partners = await asyncio.gather(*(reader.dm_partners(u) for u in users))
            assert [sorted(p) for p in partners] == [
                sorted([admin.id, users[1].id]),
                sorted([admin.id, users[0].id]),
                [admin.id],
            ]
            assert len(statements) == 1, statements


async def test_concurrent_session_lookups_share_one_query(database_url: str) -> None:
    """The streams of a reconnect storm, each with a token this process has not seen yet."""
    async with started(database_url) as store:
        user, _ = await store.ensure_user("ana")
        now = 1_000_000
        for key, lifetime in (("live", 10), ("other", 20), ("ended", 10), ("expired", 1)):
            await store.sessions.add(key, user.id, now, now + lifetime)
        await store.sessions.end("ended", now)
        asked = ("live", "other", "ended", "expired", "nobody")
        async with sent(store) as statements:
            found = await asyncio.gather(*(store.sessions.find(key, now + 5) for key in asked))
        assert found == [(user.id, now + 10), (user.id, now + 20), None, None, None]
        assert len(statements) == 1, statements


async def _proxied_reader(url: str) -> tuple[Store, list[Chat]]:
    """A store through the proxy, with DMs it has not read yet (made by another store)."""
    async with started(url) as writer:
        _, _, made = await dms_with_admin(writer, 3)
    reader = open_store(url)
    await reader.start()
    return reader, made


async def test_a_caller_that_leaves_does_not_fail_the_others_sharing_its_query(
    proxied_mysql: tuple[str, TcpProxy],
) -> None:
    url, proxy = proxied_mysql
    reader, made = await _proxied_reader(url)
    try:
        proxy.stall()
        with recording() as statements:
            leaving = asyncio.create_task(reader.get_chat(made[0].id))
            staying = asyncio.create_task(reader.get_chat(made[1].id))
            await eventually(lambda: bool(statements) and proxy.held > 0, "the look-up waits on the database")
            leaving.cancel()
            proxy.resume()
            assert await staying == made[1]
            assert await reader.get_chat(made[0].id) == made[0]
        assert leaving.cancelled()
        assert len(statements) == 1, statements
    finally:
        proxy.resume()
        await reader.close()


async def test_a_failed_query_fails_each_caller_sharing_it_with_unavailable(
    proxied_mysql: tuple[str, TcpProxy],
) -> None:
    url, proxy = proxied_mysql
    reader, made = await _proxied_reader(url)
    try:
        # As many idle connections as callers: alone, each caller would send its own query.
        await asyncio.gather(*(reader.ping() for _ in made))
        proxy.stall()
        with recording() as statements:
            waiting = [asyncio.create_task(reader.get_chat(chat.id)) for chat in made]
            await eventually(lambda: bool(statements) and proxy.held > 0, "the look-up waits on the database")
            proxy.reset()  # the connection carrying it breaks
            outcomes: list[Any] = await asyncio.gather(*waiting, return_exceptions=True)
        assert [type(outcome) for outcome in outcomes] == [Unavailable] * len(made), outcomes
        assert len(statements) == 1, statements
        proxy.resume()
        assert await reader.get_chat(made[0].id) == made[0], "the next caller asks again"
    finally:
        proxy.resume()
        await reader.close()
