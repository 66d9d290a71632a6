"""POST /api/chats/{id}/typing: not stored, limited per user, told to a DM's partner as `event: typing`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from .chat_client import ChatClient, Stream
from .test_reads import next_non_presence
from .test_scale_out import Make, process, shared_redis  # noqa: F401 - fixtures


async def typing(
    client: ChatClient, chat_id: int | str, username: str, status: int = 200, **body: Any
) -> dict[str, Any]:
    answer: dict[str, Any] = await client.call(
        "POST", f"/api/chats/{chat_id}/typing", json={"username": username, **body}, status=status
    )
    return answer


async def test_the_dm_partner_hears_of_it_and_nobody_else(client: ChatClient) -> None:
    ana = (await client.login("ana"))["user"]
    await client.login("beto")
    dm = await client.dm_id("ana", "admin")
    admin_tabs = [await client.open_stream({"username": "admin"}) for _ in range(2)]
    ana_stream = await client.open_stream({"username": "ana"})
    beto_stream = await client.open_stream({"username": "beto"})

    assert await typing(client, dm, "ana") == {"chat_id": dm, "announced": True}
    expected = {"chat_id": dm, "user_id": ana["id"], "username": "ana"}
    for tab in admin_tabs:
        assert await next_non_presence(tab) == ("typing", expected)

    # General is everyone's: answered, but announced to no one. The typist's own streams and
    # people outside the DM hear nothing: their next event is the next message.
    general = client.store.general_id
    assert await typing(client, general, "ana") == {"chat_id": general, "announced": False}
    message = await client.post(general, "hola", "admin")
    for stream in (*admin_tabs, ana_stream, beto_stream):
        assert await next_non_presence(stream) == ("message", message)
    # Nothing is stored: a stream resuming from before sees the message only.
    replay = await client.open_stream({"username": "admin", "last_event_id": 0})
    assert await replay.messages(1) == [message]


async def test_who_may_say_they_are_typing(client: ChatClient) -> None:
    await client.login("ana")
    await client.login("beto")
    dm = await client.dm_id("ana", "admin")
    anonymous = await client.call("POST", f"/api/chats/{dm}/typing", json={}, status=401)
    assert anonymous["error"]
    assert (await typing(client, dm, "beto", status=403))["error"] == "not a participant of this chat"
    assert (await typing(client, 424242, "ana", status=404)) == {"error": "unknown chat", "chat_id": 424242}
    assert (await typing(client, dm, "nadie", status=404))["error"] == "unknown user"


@pytest.mark.parametrize("path_id", ["abc", "0", "-1", "99999999999", "1.5", "%20"])
async def test_bad_chat_ids_are_400(client: ChatClient, path_id: str) -> None:
    await client.login("ana")
    assert (await typing(client, path_id, "ana", status=400))["field"] == "chat_id"


async def test_limited_per_user(make_client: Callable[..., Awaitable[ChatClient]]) -> None:
    client = await make_client(typing_limit_user=3)
    await client.login("ana")
    await client.login("beto")
    ana_dm, beto_dm = await client.dm_id("ana", "admin"), await client.dm_id("beto", "admin")
    admin = await client.open_stream({"username": "admin"})
    for _ in range(3):
        await typing(client, ana_dm, "ana")
    refused = await client.http.post(f"/api/chats/{ana_dm}/typing", json={"username": "ana"})
    assert refused.status == 429
    assert "Retry-After" in refused.headers
    # Per user: Beto still may; the admin heard Ana three times, then Beto.
    await typing(client, beto_dm, "beto")
    heard = [await next_typing(admin) for _ in range(4)]
    assert [h["username"] for h in heard] == ["ana", "ana", "ana", "beto"]


async def next_typing(stream: Stream) -> dict[str, Any]:
    name, data = await next_non_presence(stream)
    assert name == "typing", (name, data)
    return dict(data)


async def test_typing_crosses_processes(process: Make, shared_redis: str) -> None:  # noqa: F811
    a, b = await process(shared_redis), await process(shared_redis)
    ana = (await a.login("ana"))["user"]
    dm = await a.dm_id("ana", "admin")
    admin_on_b = await b.open_stream({"username": "admin"})
    await typing(a, dm, "ana")
    assert await next_typing(admin_on_b) == {"chat_id": dm, "user_id": ana["id"], "username": "ana"}
