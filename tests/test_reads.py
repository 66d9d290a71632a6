"""Read markers and unread counts: POST /api/chats/{id}/read, `unread` in chat lists, `event: read`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat_server import jsonutil

from .chat_client import ChatClient, Stream
from .conftest import every_dialect
from .test_scale_out import Make, process, shared_redis  # noqa: F401 - fixtures


async def mark_read(
    client: ChatClient, chat_id: int | str, username: str, last_read_id: object, status: int = 200
) -> dict[str, Any]:
    body: dict[str, Any] = await client.call(
        "POST",
        f"/api/chats/{chat_id}/read",
        json={"last_read_id": last_read_id},
        headers={"X-Username": username},
        status=status,
    )
    return body


async def unread_by_chat(client: ChatClient, username: str) -> dict[int, int]:
    return {c["id"]: c["unread"] for c in await client.chats(username)}


async def next_non_presence(stream: Stream) -> tuple[str | None, Any]:
    """The next event that is not about presence, as (event name, data)."""
    while True:
        event = await stream.next_event()
        if event.event != "presence":
            return event.event, jsonutil.loads(event.data or "null")


@every_dialect
async def test_unread_counts_others_messages_after_the_marker(client: ChatClient) -> None:
    await client.login("ana")
    dm = await client.dm_id("ana", "admin")
    general = client.store.general_id
    sent = [await client.post(dm, f"hola {n}", "ana") for n in range(3)]
    await client.post(general, "para todos", "ana")
    await client.post(dm, "respuesta", "admin")

    # Ana's own messages are not unread for her; the admin has not read anything yet.
    assert await unread_by_chat(client, "admin") == {general: 1, dm: 3}
    assert await unread_by_chat(client, "ana") == {general: 0, dm: 1}

    marker = await mark_read(client, dm, "admin", sent[1]["id"])
    assert marker == {"chat_id": dm, "last_read_id": sent[1]["id"], "unread": 1}
    assert await unread_by_chat(client, "admin") == {general: 1, dm: 1}

    newest = (await client.history(dm, username="admin"))[-1]["id"]
    assert await mark_read(client, dm, "admin", newest) == {
        "chat_id": dm,
        "last_read_id": newest,
        "unread": 0,
    }
    assert await unread_by_chat(client, "admin") == {general: 1, dm: 0}


@every_dialect
async def test_a_marker_only_moves_forward_and_never_past_the_newest_message(client: ChatClient) -> None:
    await client.login("ana")
    dm = await client.dm_id("ana", "admin")
    ids = [(await client.post(dm, f"m{n}", "ana"))["id"] for n in range(4)]

    assert (await mark_read(client, dm, "admin", ids[2]))["last_read_id"] == ids[2]
    again = await mark_read(client, dm, "admin", ids[0])  # an older tab reporting late
    assert again == {"chat_id": dm, "last_read_id": ids[2], "unread": 1}
    beyond = await mark_read(client, dm, "admin", 2_000_000_000)  # a message that does not exist yet
    assert beyond == {"chat_id": dm, "last_read_id": ids[3], "unread": 0}

    later = await client.post(dm, "más tarde", "ana")
    assert (await unread_by_chat(client, "admin"))[dm] == 1
    assert (await mark_read(client, dm, "admin", 0))["last_read_id"] == ids[3]
    assert (await mark_read(client, dm, "admin", later["id"]))["unread"] == 0


async def test_concurrent_markers_keep_the_highest(client: ChatClient) -> None:
    await client.login("ana")
    dm = await client.dm_id("ana", "admin")
    ids = [(await client.post(dm, f"m{n}", "ana"))["id"] for n in range(20)]
    await asyncio.gather(*(mark_read(client, dm, "admin", i) for i in reversed(ids)))
    assert (await mark_read(client, dm, "admin", 0))["last_read_id"] == ids[-1]
    assert (await unread_by_chat(client, "admin"))[dm] == 0


async def test_the_admin_inbox_counts_each_dm_on_its_own(client: ChatClient) -> None:
    names = ("ana", "beto", "carla")
    for name in names:
        await client.login(name)
    dms = {name: await client.dm_id(name, "admin") for name in names}
    for count, name in enumerate(names, start=1):
        for n in range(count):
            await client.post(dms[name], f"{name} {n}", name)
    chats = await client.chats("admin")
    # Most recently active first, after General.
    assert [c["id"] for c in chats[1:]] == [dms["carla"], dms["beto"], dms["ana"]]
    assert {c["id"]: c["unread"] for c in chats[1:]} == {dms["ana"]: 1, dms["beto"]: 2, dms["carla"]: 3}
    assert chats[0]["unread"] == 0


async def test_a_newcomer_starts_with_general_read(client: ChatClient) -> None:
    general = client.store.general_id
    await client.post(general, "antes de ti", "ana")
    await client.login("nuevo")
    assert (await unread_by_chat(client, "nuevo"))[general] == 0
    await client.post(general, "después", "ana")
    assert (await unread_by_chat(client, "nuevo"))[general] == 1


async def test_accounts_made_without_a_login_start_with_general_read_at_their_first(
    client: ChatClient,
) -> None:
    general = client.store.general_id
    for n in range(3):
        await client.post(general, f"antes {n}", "ana")
    # The server made the admin's account at start-up, before any of this: no marker yet.
    assert (await unread_by_chat(client, "admin"))[general] == 3
    await client.login("admin")
    assert (await unread_by_chat(client, "admin"))[general] == 0
    await client.post(general, "después", "ana")
    await client.login("admin")  # a later login moves nothing
    assert (await unread_by_chat(client, "admin"))[general] == 1
    # An account made by its first post got its marker then: a login later moves nothing.
    await client.post(general, "hola", "carla")
    await client.post(general, "para carla", "ana")
    await client.login("carla")
    assert (await unread_by_chat(client, "carla"))[general] == 1


async def test_unread_is_only_in_chat_lists(client: ChatClient) -> None:
    await client.login("ana")
    await client.login("beto")
    created = await client.call(
        "POST", "/api/chats/dm", json={"username": "ana", "with_username": "beto"}, status=201
    )
    assert "unread" not in created["chat"]  # it differs per viewer; the list gives each their own
    assert all("unread" in c for c in await client.chats("ana"))


@pytest.mark.parametrize(
    ("path_id", "body", "field"),
    [
        ("abc", {"last_read_id": 1}, "chat_id"),
        ("0", {"last_read_id": 1}, "chat_id"),
        ("-3", {"last_read_id": 1}, "chat_id"),
        ("99999999999", {"last_read_id": 1}, "chat_id"),
        ("GENERAL", {}, "last_read_id"),
        ("GENERAL", {"last_read_id": None}, "last_read_id"),
        ("GENERAL", {"last_read_id": "x"}, "last_read_id"),
        ("GENERAL", {"last_read_id": -1}, "last_read_id"),
        ("GENERAL", {"last_read_id": 1.5}, "last_read_id"),
        ("GENERAL", {"last_read_id": True}, "last_read_id"),
        ("GENERAL", {"last_read_id": 2**31}, "last_read_id"),
    ],
)
async def test_bad_ids_are_400(client: ChatClient, path_id: str, body: dict[str, Any], field: str) -> None:
    await client.login("ana")
    chat = str(client.store.general_id) if path_id == "GENERAL" else path_id
    answer = await client.call(
        "POST", f"/api/chats/{chat}/read", json=body, headers={"X-Username": "ana"}, status=400
    )
    assert answer["field"] == field


async def test_who_may_mark_a_chat_read(client: ChatClient) -> None:
    await client.login("ana")
    await client.login("beto")
    dm = await client.dm_id("ana", "admin")
    general = client.store.general_id
    body = {"last_read_id": 0}

    assert (await client.call("POST", f"/api/chats/{general}/read", json=body, status=401))["error"]
    unknown = await mark_read(client, 424242, "ana", 0, status=404)
    assert unknown == {"error": "unknown chat", "chat_id": 424242}
    forbidden = await mark_read(client, dm, "beto", 0, status=403)
    assert forbidden["error"] == "not a participant of this chat"
    assert (await mark_read(client, dm, "nadie", 0, status=404))["error"] == "unknown user"
    # General is everyone's; the token and the body's username identify the caller too.
    token = (await client.login("beto"))["token"]
    auth = {"Authorization": f"Bearer {token}"}
    await client.call("POST", f"/api/chats/{general}/read", json=body, headers=auth, status=200)
    await client.call("POST", f"/api/chats/{general}/read", json={**body, "username": "ana"}, status=200)


async def test_the_readers_other_tabs_and_dm_partner_hear_of_it_and_nobody_else(client: ChatClient) -> None:
    admin = (await client.login("admin"))["user"]
    await client.login("ana")
    await client.login("beto")
    dm = await client.dm_id("ana", "admin")
    first_tab = await client.open_stream({"username": "admin"})
    second_tab = await client.open_stream({"username": "admin"})
    ana_stream = await client.open_stream({"username": "ana"})
    beto_stream = await client.open_stream({"username": "beto"})
    message = await client.post(dm, "¿me lees?", "ana")
    for stream in (first_tab, second_tab, ana_stream):
        assert await stream.messages(1) == [message]

    marker = await mark_read(client, dm, "admin", message["id"])
    assert marker == {"chat_id": dm, "last_read_id": message["id"], "unread": 0}
    # The reader's tabs get the marker with their unread count; the partner, how far they read.
    expected = {**marker, "user_id": admin["id"]}
    frame = await first_tab.raw_until_blank()
    assert frame == b"event: read\ndata: " + jsonutil.dumps(expected) + b"\n\n"  # no id: not a message
    assert await next_non_presence(second_tab) == ("read", expected)
    seen = {"chat_id": dm, "user_id": admin["id"], "last_read_id": message["id"]}
    assert await next_non_presence(ana_stream) == ("read", seen)

    # A marker that does not move tells nobody; nor does one in General (everyone's: O(users));
    # Beto, outside the DM, hears of none.
    await mark_read(client, dm, "admin", message["id"])
    general = await client.post(client.store.general_id, "para todos", "ana")
    await mark_read(client, client.store.general_id, "ana", general["id"])
    reply = await client.post(dm, "sí", "admin")
    for stream in (first_tab, second_tab):
        assert await next_non_presence(stream) == ("message", general)
        assert await next_non_presence(stream) == ("message", reply)
    assert await next_non_presence(ana_stream) == ("message", general)
    assert (await next_non_presence(ana_stream))[0] == "read"  # her own marker in General
    assert await next_non_presence(ana_stream) == ("message", reply)
    last = await client.post(client.store.general_id, "fin", "admin")
    assert await next_non_presence(beto_stream) == ("message", general)
    assert await next_non_presence(beto_stream) == ("message", last)


async def test_chat_lists_carry_each_dm_participants_read_marker(client: ChatClient) -> None:
    await client.login("ana")
    await client.login("beto")
    dm = await client.dm_id("ana", "admin")
    sent = [await client.post(dm, f"hola {n}", "ana") for n in range(2)]
    await mark_read(client, dm, "admin", sent[0]["id"])

    def markers(chats: list[dict[str, Any]]) -> dict[str, int]:
        (chat,) = [c for c in chats if c["id"] == dm]
        return {p["username"]: p["last_read_id"] for p in chat["participants"]}

    assert markers(await client.chats("ana")) == {"ana": 0, "admin": sent[0]["id"]}
    await mark_read(client, dm, "ana", sent[1]["id"])
    assert markers(await client.chats("admin")) == {"admin": sent[0]["id"], "ana": sent[1]["id"]}
    # Only lists carry them: a chat object elsewhere (a new DM) has none.
    created = await client.call("POST", "/api/chats/dm", json={"username": "ana", "with_username": "beto"})
    assert all("last_read_id" not in p for p in created["chat"]["participants"])


async def test_read_events_cross_processes(process: Make, shared_redis: str) -> None:  # noqa: F811
    a, b = await process(shared_redis), await process(shared_redis)
    admin = (await a.login("admin"))["user"]
    await a.login("ana")
    dm = await a.dm_id("ana", "admin")
    admin_on_b = await b.open_stream({"username": "admin"})
    ana_on_b = await b.open_stream({"username": "ana"})
    message = await a.post(dm, "hola", "ana")
    assert await admin_on_b.messages(1) == [message]
    assert await ana_on_b.messages(1) == [message]
    marker = await mark_read(a, dm, "admin", message["id"])
    assert await next_non_presence(admin_on_b) == ("read", {**marker, "user_id": admin["id"]})
    seen = {"chat_id": dm, "user_id": admin["id"], "last_read_id": message["id"]}
    assert await next_non_presence(ana_on_b) == ("read", seen)
