"""Group commit: a row the database refuses fails only its own post, never its neighbours'."""

from __future__ import annotations

import asyncio

import pytest

from chat_server.app import create_app
from chat_server.errors import ApiError
from chat_server.settings import Settings

from .chat_client import AiohttpClient, ChatClient
from .databases import throwaway_database

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
