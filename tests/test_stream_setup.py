"""Stream setup: what a stream reads and holds while it connects, whatever happens meanwhile."""

from __future__ import annotations

import pytest

from chat_server import service
from chat_server.models import User

from .chat_client import ChatClient


async def test_a_per_user_stream_follows_a_dm_made_while_it_reads_its_chats(
    client: ChatClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.login("ana")
    await client.login("beto")
    ana = await client.store.get_user(username="ana")
    beto = await client.store.get_user(username="beto")
    assert ana is not None
    assert beto is not None
    first = await client.open_stream({"username": "ana"})  # ana is online: no presence work next
    read_chats = client.store.chat_ids_of
    made: list[int] = []

    async def a_dm_is_made_right_after(user: User) -> list[int]:
        """The stream's own read of its chats, and then, before it goes on, a new DM."""
        chats = await read_chats(user)
        if user.id == ana.id and not made:
            chat, _ = await service.open_dm(client.app, beto, ana)
            made.append(chat.id)
        return chats

    monkeypatch.setattr(client.store, "chat_ids_of", a_dm_is_made_right_after)
    second = await client.open_stream({"username": "ana"})
    assert made, "the stream read its chats"
    sent = await client.post(made[0], "hola ana", "beto")
    assert await second.messages(1) == [sent]
    assert await first.messages(1) == [sent]
    first.close()
    second.close()
