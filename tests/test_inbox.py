"""The paged inbox, name and message search, on both stores: GET /api/chats?limit=&cursor=&q=,
GET /api/search."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from chat_server import jsonutil

from .chat_client import ChatClient
from .test_legacy_history import Start, sql_time, start  # noqa: F401 - fixture
from .test_migrate_legacy import LegacyDb, legacy_db  # noqa: F401 - fixture
from .test_scale_out import shared_redis  # noqa: F401 - fixture

MakeClient = Callable[..., Awaitable[ChatClient]]


async def page(client: ChatClient, username: str, status: int = 200, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = await client.call(
        "GET", "/api/chats", params={"username": username, **params}, status=status
    )
    return body


async def every_page(client: ChatClient, username: str, limit: int) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": limit} if cursor is None else {"limit": limit, "cursor": cursor}
        body = await page(client, username, **params)
        pages.append(body["chats"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


async def customers(client: ChatClient, count: int, prefix: str = "cliente") -> dict[str, int]:
    """`count` customers, each with one message in their DM with admin, oldest first: name -> DM."""
    dms = {}
    for n in range(count):
        name = f"{prefix}{n:02d}"
        await client.login(name)
        dms[name] = await client.dm_id(name, "admin")
        await client.post(dms[name], f"hola, soy {name}", name)
    return dms


async def search(client: ChatClient, username: str, status: int = 200, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = await client.call(
        "GET", "/api/search", params={"username": username, **params}, status=status
    )
    return body


async def test_pages_hold_every_untouched_chat_once_in_activity_order_while_messages_arrive(
    client: ChatClient,
) -> None:
    dms = await customers(client, 13)
    general = client.store.general_id
    admin_stream = await client.open_stream({"username": "admin"})
    by_activity = list(reversed(dms.values()))  # the last to write first

    seen: list[int] = []
    touched: set[int] = set()
    body = await page(client, "admin", limit=4)
    assert [c["id"] for c in body["chats"]] == [general, *by_activity[:3]]  # General counts
    seen += [c["id"] for c in body["chats"][1:]]
    pages = 1
    while body["next_cursor"] is not None:
        # Between pages: a chat already listed and one not listed yet both get a message.
        unseen = [c for c in by_activity if c not in seen and c not in touched]
        for chat_id, name in ((seen[0], "admin"), (unseen[-1], None)):
            sender = name or next(n for n, c in dms.items() if c == chat_id)
            message = await client.post(chat_id, f"nuevo en {chat_id}", sender)
            touched.add(chat_id)
            # It moved up: the admin's stream says so, whether or not the chat was listed.
            assert (await admin_stream.messages(1))[0]["id"] == message["id"]
        body = await page(client, "admin", limit=4, cursor=body["next_cursor"])
        assert all(c["type"] == "dm" for c in body["chats"])
        assert len(body["chats"]) <= 4
        seen += [c["id"] for c in body["chats"]]
        pages += 1

    assert len(seen) == len(set(seen)), "a chat was listed twice"
    untouched = [c for c in by_activity if c not in touched]
    assert [c for c in seen if c in untouched] == untouched  # each once, in activity order
    assert pages >= 3


async def test_a_page_carries_last_message_unread_and_online_and_old_clients_get_the_first_page(
    client: ChatClient,
) -> None:
    dms = await customers(client, 3)
    stream = await client.open_stream({"username": "cliente01"})
    body = await page(client, "admin")
    assert body["next_cursor"] is None  # fewer than the default 50
    general, newest, *_ = body["chats"]
    assert (general["type"], general["unread"]) == ("general", 0)
    assert newest["id"] == dms["cliente02"]
    assert newest["last_message"]["contenido"] == "hola, soy cliente02"
    assert newest["unread"] == 1
    online = {p["username"]: p["online"] for c in body["chats"] for p in c["participants"]}
    assert (online["cliente01"], online["cliente00"]) == (True, False)
    stream.close()

    # limit=1: General alone, then one DM a page.
    first = await page(client, "admin", limit=1)
    assert [c["type"] for c in first["chats"]] == ["general"]
    second = await page(client, "admin", limit=1, cursor=first["next_cursor"])
    assert [c["id"] for c in second["chats"]] == [dms["cliente02"]]


async def test_unread_counts_stay_exact_through_messages_markers_and_paging(client: ChatClient) -> None:
    dms = await customers(client, 6)
    # Concurrent posts by both sides, and read markers moving while they land.
    names = list(dms)

    async def chatter(name: str) -> None:
        for n in range(4):
            await client.post(dms[name], f"{name} {n}", name if n % 2 else "admin")

    async def reader(name: str) -> None:
        for _ in range(3):
            newest = (await client.history(dms[name], username="admin"))[-1]["id"]
            await client.call(
                "POST",
                f"/api/chats/{dms[name]}/read",
                json={"last_read_id": newest},
                headers={"X-Username": "admin"},
            )

    await asyncio.gather(*(chatter(n) for n in names), *(reader(n) for n in names[::2]))

    listed = {c["id"]: c["unread"] for p in await every_page(client, "admin", 3) for c in p}
    for name in names:
        history = await client.history(dms[name], username="admin")
        marker = await client.call(
            "POST", f"/api/chats/{dms[name]}/read", json={"last_read_id": 0}, headers={"X-Username": "admin"}
        )
        expected = sum(1 for m in history if m["id"] > marker["last_read_id"] and m["username"] != "admin")
        assert listed[dms[name]] == expected == marker["unread"], name
    # The customers' side counts the admin's messages.
    ana_view = {c["id"]: c["unread"] for c in (await page(client, names[1]))["chats"]}
    assert ana_view[dms[names[1]]] == 2


async def test_bad_cursors_and_limits_are_400(client: ChatClient) -> None:
    await client.login("ana")
    for cursor in ("x", "1", "1.", ".1", "-1.2", "1.2.3", "\uff11.\uff12", "99999999999.1", ""):
        assert (await page(client, "ana", status=400, cursor=cursor))["field"] == "cursor", cursor
    for limit in ("0", "201", "x"):
        assert (await page(client, "ana", status=400, limit=limit))["field"] == "limit"


async def test_name_search_finds_the_callers_dms_by_prefix_like_login(client: ChatClient) -> None:
    for name in ("Ana", "anabel", "Ánibal", "beto", "carla", "an_a", "a%b"):
        await client.login(name)

    def names(body: dict[str, Any], viewer: str) -> list[str]:
        return [p["username"] for c in body["chats"] for p in c["participants"] if p["username"] != viewer]

    # Case and accents are ignored, as at login; by name; nothing but DMs; no cursor.
    found = await page(client, "admin", q="án")
    assert names(found, "admin") == ["an_a", "Ana", "anabel", "Ánibal"]
    assert found["next_cursor"] is None
    assert all(c["type"] == "dm" and "unread" in c for c in found["chats"])
    # LIKE's wildcards are letters here.
    assert names(await page(client, "admin", q="an_"), "admin") == ["an_a"]
    assert names(await page(client, "admin", q="a%"), "admin") == ["a%b"]
    assert names(await page(client, "admin", q="ANA", limit=1), "admin") == ["Ana"]

    # Only the caller's own DMs: Ana has none with beto until one is made.
    assert names(await page(client, "Ana", q="be"), "Ana") == []
    await client.dm_id("carla", "beto")
    assert names(await page(client, "Ana", q="be"), "Ana") == []
    await client.dm_id("Ana", "beto")
    assert names(await page(client, "Ana", q="be"), "Ana") == ["beto"]
    assert names(await page(client, "Ana", q="adm"), "Ana") == ["admin"]
    assert names(await page(client, "Ana", q="carla"), "Ana") == []
    for bad in ("", "   ", "x" * 101, "a\x00"):
        assert (await page(client, "Ana", status=400, q=bad))["field"] == "q"


async def test_message_search_finds_words_only_where_the_caller_may_read(client: ChatClient) -> None:
    for name in ("ana", "beto", "carla"):
        await client.login(name)
    general = client.store.general_id
    ana_dm = await client.dm_id("ana", "admin")
    private = await client.dm_id("beto", "carla")
    in_dm = await client.post(ana_dm, "La canción del pedido llegó", "ana")
    in_general = await client.post(general, "¿Alguien vio la CANCION nueva?", "beto")
    await client.post(private, "canción secreta del pedido", "carla")
    await client.post(ana_dm, "otra cosa", "admin")

    found = await search(client, "ana", q="cancion")
    assert [m["id"] for m in found["messages"]] == [in_general["id"], in_dm["id"]]  # newest first
    assert found["next_cursor"] is None
    both = await search(client, "ana", q="pedido canción")
    assert [m["id"] for m in both["messages"]] == [in_dm["id"]]  # every word; never carla's
    carla = await search(client, "carla", q="pedido")
    assert [m["contenido"] for m in carla["messages"]] == ["canción secreta del pedido"]
    only_dm = await search(client, "ana", q="canción", chat_id=ana_dm)
    assert [m["id"] for m in only_dm["messages"]] == [in_dm["id"]]

    # Paging back: a cursor per page, then none.
    first = await search(client, "ana", q="cancion", limit=1)
    assert [m["id"] for m in first["messages"]] == [in_general["id"]]
    rest = await search(client, "ana", q="cancion", limit=1, cursor=first["next_cursor"])
    assert [m["id"] for m in rest["messages"]] == [in_dm["id"]]

    assert (await search(client, "ana", status=403, q="pedido", chat_id=private))["chat_id"] == private
    assert (await search(client, "ana", status=404, q="pedido", chat_id=424242))["error"] == "unknown chat"
    await client.call("GET", "/api/search", params={"q": "pedido"}, status=401)
    for bad in ({"q": "de la"}, {"q": ""}, {}, {"q": "pedido", "cursor": "x"}, {"q": "pedido", "limit": "0"}):
        assert (await search(client, "ana", status=400, **bad))["error"]
    # Operators of either engine are only letters here.
    for odd in ('"pedido', "pedido*", "-pedido", "+pedido", "pedido OR secreta", "NEAR(pedido)"):
        assert {m["id"] for m in (await search(client, "ana", q=odd))["messages"]} <= {in_dm["id"]}


async def test_the_per_user_stream_follows_new_dms_and_replays_across_them(client: ChatClient) -> None:
    await client.login("ana")
    stream = await client.open_stream({"username": "admin"})
    await client.login("beto")  # a DM made after the stream opened
    event = await stream.next_event()
    while event.event != "chat":
        event = await stream.next_event()
    beto_dm = await client.dm_id("beto", "admin")
    sent = await client.post(beto_dm, "hola", "beto")
    assert await stream.messages(1) == [sent]
    stream.close()

    ana_dm = await client.dm_id("ana", "admin")
    private = await client.dm_id("ana", "beto")
    later = [
        await client.post(ana_dm, "uno", "ana"),
        await client.post(private, "no es del admin", "ana"),
        await client.post(client.store.general_id, "dos", "beto"),
        await client.post(beto_dm, "tres", "beto"),
    ]
    resumed = await client.open_stream({"username": "admin", "last_event_id": sent["id"]})
    assert await resumed.messages(3) == [later[0], later[2], later[3]]


async def test_a_per_user_replay_past_the_limit_resets_even_when_each_chat_has_one(
    make_client: MakeClient,
) -> None:
    client = await make_client(replay_limit=3)
    await customers(client, 5)
    stream = await client.open_stream({"username": "admin", "last_event_id": 0})
    event = await stream.next_event()
    assert (event.event, event.id) == ("reset", str(client.hub.released_id))
    # Within the limit, the same stream replays.
    newest = client.hub.released_id
    resumed = await client.open_stream({"username": "admin", "last_event_id": newest - 3})
    assert [m["id"] for m in await resumed.messages(3)] == [newest - 2, newest - 1, newest]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_fifteen_hundred_customers_on_the_embedded_store(make_client: MakeClient) -> None:
    """About 1,100 customers used to answer 500 on SQLite ("Expression tree is too large");
    customers made outside the server (bulk SQL) are backfilled into the inbox at start."""
    client = await make_client()
    store = client.store
    admin = await store.get_user(username="admin")
    assert admin is not None
    count = 1500
    async with store.transaction() as db:
        for n in range(count):
            _, user_id = await db.execute("INSERT INTO usuarios (username) VALUES (%s)", (f"c{n:04d}",))
            _, chat_id = await db.execute("INSERT INTO chats (type) VALUES ('dm')")
            await db.execute(
                "INSERT INTO chat_participants (chat_id, user_id) VALUES (%s, %s), (%s, %s)",
                (chat_id, admin.id, chat_id, user_id),
            )
            await db.execute(
                "INSERT INTO dm_pairs (user_low, user_high, chat_id) VALUES (%s, %s, %s)",
                (admin.id, user_id, chat_id),
            )
            await db.execute(
                "INSERT INTO mensajes_v2 (chat_id, sender_id, contenido) VALUES (%s, %s, 'hola')",
                (chat_id, user_id),
            )
    restarted = await make_client()  # backfills chat_inbox from the messages
    pages = await every_page(restarted, "admin", 200)
    ids = [c["id"] for p in pages for c in p if c["type"] == "dm"]
    assert len(ids) == len(set(ids)) == count
    newest = [c["last_message"]["id"] for p in pages for c in p if c["type"] == "dm"]
    assert newest == sorted(newest, reverse=True)
    assert all(c["unread"] == 1 for p in pages for c in p if c["type"] == "dm")
    found = await page(restarted, "admin", q="c14")
    assert len(found["chats"]) == 50  # c1400 ... c1449, the default page


async def test_messages_copied_from_the_legacy_table_are_found_by_search_and_listed(
    legacy_db: LegacyDb,  # noqa: F811 - fixture
    start: Start,  # noqa: F811 - fixture
) -> None:
    first = await start(legacy_db.url)  # makes the tables (the legacy one too, on SQLite)
    await first.login("ana")
    await first.login("pedro")
    await first.http.close()
    legacy_db.insert_legacy(
        [
            (1, "pedro", "la factura extraviada", sql_time(-timedelta(days=3)), "cliente", None),
            (2, "ana", "mi factura privada", sql_time(-timedelta(days=2)), "cliente", "admin"),
        ]
    )
    client = await start(legacy_db.url)  # copies them in the background, then answers
    ana = await search(client, "ana", q="factura")
    assert [m["contenido"] for m in ana["messages"]] == ["mi factura privada", "la factura extraviada"]
    assert all(m["id"] < 0 for m in ana["messages"])  # copied rows
    pedro = await search(client, "pedro", q="factura")
    assert [m["contenido"] for m in pedro["messages"]] == ["la factura extraviada"]  # not ana's DM
    # Ana's DM with admin has only copied history: the inbox lists its newest message, not as new.
    listed = (await page(client, "admin"))["chats"]
    dm = next(c for c in listed if "ana" in {p["username"] for p in c["participants"]})
    assert (dm["last_message"]["contenido"], dm["unread"]) == ("mi factura privada", 0)


async def test_a_dm_message_announced_by_a_previous_version_reaches_per_user_streams(
    make_client: MakeClient,
    shared_redis: str,  # noqa: F811 - fixture
) -> None:
    """During a rolling restart, a process of the previous version announces messages without
    their DM's members: the hub still routes them to the participants' per-user streams."""
    client = await make_client(redis_url=shared_redis)
    await client.login("ana")
    dm = await client.dm_id("ana", "admin")
    admin_stream = await client.open_stream({"username": "admin"})
    ana = await client.store.get_user(username="ana")
    assert ana is not None
    stored = await client.store.add_message(dm, ana, "desde la versión anterior")
    old = {"id": stored.id, **stored.to_json()}  # the API's shape: no "members"
    broker = client.broker
    await broker.redis.publish(broker.channel, jsonutil.dumps({"type": "start", "token": "old:1"}))
    await broker.redis.publish(
        broker.channel, jsonutil.dumps({"type": "done", "token": "old:1", "message": old})
    )
    assert await admin_stream.messages(1) == [stored.to_json()]
