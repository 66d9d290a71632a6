"""Server-Sent Events: wire format, live delivery, exact resume, fan-out, slow consumers, lifecycle."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Awaitable, Callable

import aiohttp

from chat_server import jsonutil

from .chat_client import WAIT, ChatClient, Stream
from .conftest import every_dialect
from .waiting import eventually

MakeClient = Callable[..., Awaitable[ChatClient]]


async def test_exact_wire_text_of_preamble_message_and_heartbeat(make_client: MakeClient) -> None:
    client = await make_client(heartbeat_seconds=0.2)
    general = client.store.general_id
    async with client.http.get(
        "/api/stream", params={"chat_id": general}, headers={"Accept-Encoding": "gzip, deflate, br"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert "Content-Encoding" not in resp.headers
        stream = Stream(resp)
        assert await stream.raw_until_blank() == b"retry: 3000\n\n"
        message = await client.post(general, 'línea 1\nlínea 2 "citada" 😀\r\nid: 999')
        frame = await stream.raw_until_blank()
        while frame == b": ping\n\n":
            frame = await stream.raw_until_blank()
        data = jsonutil.dumps(message).decode()
        assert frame.decode() == f"id: {message['id']}\nevent: message\ndata: {data}\n\n"
        assert await stream.raw_until_blank() == b": ping\n\n"


async def test_live_delivery_on_per_chat_and_per_user_streams(client: ChatClient) -> None:
    await client.login("ana")
    general = client.store.general_id
    ana_dm = await client.dm_id("ana", "admin")
    chat_stream = await client.open_stream({"chat_id": general})
    ana_stream = await client.open_stream({"username": "ana"})
    admin_stream = await client.open_stream({"username": "admin"})
    in_general = await client.post(general, "para todos", "beto")
    in_dm = await client.post(ana_dm, "solo admin", "ana")
    assert await chat_stream.messages(1) == [in_general]
    assert await ana_stream.messages(2) == [in_general, in_dm]
    assert await admin_stream.messages(2) == [in_general, in_dm]


async def test_per_user_stream_announces_a_new_dm_and_then_carries_it(client: ChatClient) -> None:
    await client.login("ana")
    await client.login("beto")
    stream = await client.open_stream({"username": "beto"})
    created = await client.call(
        "POST", "/api/chats/dm", json={"username": "ana", "with_username": "beto"}, status=201
    )
    event = await stream.next_event()
    assert event.event == "chat"
    assert event.id is None
    assert jsonutil.loads(event.data or "") == created["chat"]
    message = await client.post(created["chat"]["id"], "hola beto", "ana")
    assert await stream.messages(1) == [message]


async def test_a_new_user_is_announced_to_the_admin(client: ChatClient) -> None:
    stream = await client.open_stream({"username": "admin"})
    await client.login("nueva")
    event = await stream.next_event()
    assert event.event == "chat"
    partners = {p["username"] for p in jsonutil.loads(event.data or "")["participants"]}
    assert partners == {"admin", "nueva"}


async def test_streams_of_a_dm_are_for_its_participants_only(client: ChatClient) -> None:
    await client.login("ana")
    await client.login("beto")
    ana_dm = await client.dm_id("ana", "admin")
    params = {"chat_id": ana_dm}
    assert (await client.call("GET", "/api/stream", params={**params, "username": "beto"}, status=403))[
        "error"
    ]
    await client.call("GET", "/api/stream", params=params, status=401)
    await client.call("GET", "/api/stream", status=401)
    await client.call("GET", "/api/stream", params={"chat_id": 9999}, status=404)
    token = (await client.login("ana"))["token"]
    stream = await client.open_stream({**params, "token": token})
    message = await client.post(ana_dm, "privado", "admin")
    assert await stream.messages(1) == [message]


async def test_bad_last_event_ids_are_refused(client: ChatClient) -> None:
    general = client.store.general_id
    for bad in ("abc", "-3", "1.5", "9" * 30):
        await client.call("GET", "/api/stream", params={"chat_id": general, "last_event_id": bad}, status=400)
        await client.call(
            "GET", "/api/stream", params={"chat_id": general}, headers={"Last-Event-ID": bad}, status=400
        )


@every_dialect
async def test_resume_by_header_and_by_query_while_messages_are_posted(client: ChatClient) -> None:
    general = client.store.general_id
    before = [(await client.post(general, f"antes {i}"))["id"] for i in range(30)]
    for how in ("header", "query"):
        resume_from = before[9]
        params: dict[str, object] = {"chat_id": general}
        headers = {}
        if how == "header":
            headers["Last-Event-ID"] = str(resume_from)
        else:
            params["last_event_id"] = resume_from
        during = asyncio.gather(*(client.post(general, f"durante {i}") for i in range(30)))
        stream = await client.open_stream(params, headers)
        posted = [m["id"] for m in await during]
        expected = sorted(i for i in before + posted if i > resume_from)
        received = [m["id"] for m in await stream.messages(len(expected))]
        assert received == expected
        after = await client.post(general, "después")
        assert [m["id"] for m in await stream.messages(1)] == [after["id"]]
        before += [*posted, after["id"]]
        stream.close()


async def test_resume_of_a_per_user_stream_covers_all_their_chats(client: ChatClient) -> None:
    await client.login("ana")
    dm = await client.dm_id("ana", "admin")
    general = client.store.general_id
    first = await client.post(general, "uno", "ana")
    missed = [await client.post(dm, "dos", "admin"), await client.post(general, "tres", "beto")]
    stream = await client.open_stream({"username": "ana"}, {"Last-Event-ID": str(first["id"])})
    assert await stream.messages(2) == missed


async def test_reset_when_too_far_behind_then_live(make_client: MakeClient) -> None:
    client = await make_client(replay_limit=5)
    general = client.store.general_id
    ids = [(await client.post(general, f"m{i}"))["id"] for i in range(8)]
    stream = await client.open_stream({"chat_id": general, "last_event_id": ids[1]})
    reset = await stream.next_event()
    assert (reset.event, reset.id) == ("reset", str(ids[-1]))
    assert jsonutil.loads(reset.data or "") == {"last_id": ids[-1]}
    live = await client.post(general, "en vivo")
    assert await stream.messages(1) == [live]
    # Within the limit, a replay instead.
    replayed = await client.open_stream({"chat_id": general, "last_event_id": ids[3]})
    assert [m["id"] for m in await replayed.messages(5)] == [*ids[4:], live["id"]]


@every_dialect
async def test_fifty_subscribers_get_two_hundred_concurrent_posts_in_order_once(client: ChatClient) -> None:
    general = client.store.general_id
    streams = [await client.open_stream({"chat_id": general}) for _ in range(50)]
    posted = await asyncio.gather(*(client.post(general, f"n{i}", f"user{i % 7}") for i in range(200)))
    expected = sorted(m["id"] for m in posted)
    for stream in streams:
        got = [m["id"] for m in await stream.messages(200)]
        assert got == expected
    # Nothing more is waiting: a marker posted now is the next event everywhere.
    marker = await client.post(general, "fin")
    for stream in streams:
        assert [m["id"] for m in await stream.messages(1)] == [marker["id"]]


async def test_a_stalled_subscriber_is_dropped_without_delaying_others_and_catches_up(
    make_client: MakeClient,
) -> None:
    # It posts as fast as it can, hundreds of times, as one user: no rate limit.
    client = await make_client(subscriber_buffer=16, post_limit_user=0)
    general = client.store.general_id
    stalled = await _stalled_stream(client, f"/api/stream?chat_id={general}")
    reader = await client.open_stream({"chat_id": general})
    text = "x" * 4000
    posted: list[int] = []
    try:
        while client.hub.stats.slow_disconnects == 0:
            assert len(posted) < 5000, "the stalled subscriber was never dropped"
            message = await client.post(general, text)
            posted.append(message["id"])
            assert [m["id"] for m in await reader.messages(1)] == [message["id"]]
    finally:
        stalled.close()
    assert client.hub.stats.slow_disconnects == 1
    await eventually(lambda: client.hub.subscriber_count == 1, "the stalled stream is released")
    # Its EventSource would reconnect with the last id it saw; from the start it gets everything.
    again = await client.open_stream({"chat_id": general}, {"Last-Event-ID": "0"})
    assert [m["id"] for m in await again.messages(len(posted))] == posted


async def _stalled_stream(client: ChatClient, path: str) -> socket.socket:
    """A raw connection that asks for a stream and then never reads, with a tiny receive window."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    server = client.http.server
    await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port or 0))
    request = f"GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n"
    await asyncio.get_running_loop().sock_sendall(sock, request.encode())
    await eventually(lambda: client.hub.subscriber_count >= 1, "the stalled stream is subscribed")
    return sock


async def test_a_thousand_open_close_cycles_leave_nothing_behind(client: ChatClient) -> None:
    general = client.store.general_id
    baseline = len(asyncio.all_tasks())
    for _ in range(1000):
        stream = await client.open_stream({"chat_id": general})
        stream.close()
    await eventually(client.hub.is_empty, "every subscriber is unregistered")
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline, "every handler task has ended")
    assert client.hub.subscriber_count == 0


async def test_shutdown_with_a_thousand_streams_open_ends_them_all(make_client: MakeClient) -> None:
    client = await make_client(max_streams_per_address=0)  # a thousand anonymous streams, one address
    general = client.store.general_id
    url = client.http.make_url(f"/api/stream?chat_id={general}")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        responses = await asyncio.gather(*(session.get(url) for _ in range(1000)))
        streams = [Stream(r) for r in responses]
        await asyncio.gather(*(s.raw_until_blank() for s in streams))
        assert client.hub.subscriber_count == 1000
        await asyncio.wait_for(client.http.server.close(), timeout=2)
        ended = await asyncio.gather(*(s.ended() for s in streams))
        assert all(ended)
        assert client.hub.is_empty()
    assert WAIT > 2


async def test_a_heartbeat_pass_writes_once_to_each_silent_stream_a_slice_per_loop_turn(
    make_client: MakeClient,
) -> None:
    client = await make_client(heartbeat_seconds=3600)  # no pass but the test's own
    hub = client.hub
    hub.beat_slice = 8
    general = client.store.general_id
    await client.login("ana")
    dm = await client.dm_id("ana", "admin")
    quiet = [await client.open_stream({"chat_id": general}) for _ in range(30)]
    ana = await client.open_stream({"username": "ana"})
    await hub.beat()  # each has just had its preamble written: not silent
    assert hub.stats.heartbeats == 0
    in_dm = await client.post(dm, "hola", "admin")
    assert await ana.messages(1) == [in_dm]  # written to since the last pass

    seen = [hub.stats.heartbeats]  # heartbeats written so far, once per loop turn of the pass

    async def watch() -> None:
        while True:
            seen.append(hub.stats.heartbeats)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await hub.beat()
    watcher.cancel()
    seen.append(hub.stats.heartbeats)
    assert hub.stats.heartbeats == len(quiet)
    assert max(b - a for a, b in itertools.pairwise(seen)) <= 8, seen

    # What each client received: one heartbeat for the silent, none for ana.
    marker = await client.post(general, "para todos")
    frame = f"id: {marker['id']}\nevent: message\ndata: {jsonutil.dumps(marker).decode()}\n\n".encode()
    for stream in quiet:
        assert [await stream.raw_until_blank(), await stream.raw_until_blank()] == [b": ping\n\n", frame]
    assert await ana.raw_until_blank() == frame
