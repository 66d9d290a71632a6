"""Peers that stop answering without closing: MariaDB, Redis, a client that stops reading.
Each is a 503 (or a dropped stream) within seconds, never a hang, and the server recovers by
itself when the peer answers again. The stalls are real: a proxy holds the bytes
(tests/tcp_proxy.py). No timing is asserted, only that answers come under a generous bound."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from chat_server import streams
from chat_server.app import create_app
from chat_server.settings import Settings
from chat_server.store import mysql

from .chat_client import WAIT, AiohttpClient, ChatClient
from .tcp_proxy import TcpProxy
from .test_operations import readyz_until
from .test_scale_out import shared_redis  # noqa: F401 - the fixture
from .waiting import eventually


async def answer(client: ChatClient, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    """Status and JSON body, within a generous bound: a hang fails the test."""
    async with asyncio.timeout(WAIT), client.http.request(method, path, **kwargs) as resp:
        return resp.status, await resp.json()


async def post(client: ChatClient, text: str, username: str = "ana") -> tuple[int, Any]:
    body = {"chat_id": client.store.general_id, "contenido": text, "username": username}
    return await answer(client, "POST", "/api/messages", json=body)


async def test_posts_answer_503_while_mariadb_is_silent_and_201_once_it_answers(
    proxied_mysql: tuple[str, TcpProxy], aiohttp_client: AiohttpClient
) -> None:
    url, proxy = proxied_mysql
    client = ChatClient(await aiohttp_client(create_app(Settings(database_url=url, secret="s"))))
    assert (await post(client, "before"))[0] == 201
    proxy.stall()
    answers = await asyncio.gather(*(post(client, f"during {i}") for i in range(5)))
    assert [status for status, _ in answers] == [503] * 5
    assert all(body["error"].startswith("database ") for _, body in answers), answers
    proxy.resume()
    status, body = await post(client, "after")
    assert status == 201, body
    texts = [m["contenido"] for m in await client.history(client.store.general_id)]
    assert texts[0] == "before"
    assert texts[-1] == "after"


async def test_one_silent_connection_holds_back_only_its_own_post(
    proxied_mysql: tuple[str, TcpProxy], aiohttp_client: AiohttpClient
) -> None:
    url, proxy = proxied_mysql
    client = ChatClient(await aiohttp_client(create_app(Settings(database_url=url, secret="s"))))
    general = client.store.general_id
    stream = await client.open_stream({"chat_id": general})
    assert (await post(client, "first"))[0] == 201
    proxy.silence_when(b"INSERT INTO mensajes_v2")  # the connection carrying it goes silent
    stuck = asyncio.create_task(post(client, "stuck"))
    await eventually(lambda: proxy.held > 0, "the INSERT is on its way")
    proxy.silence_when(None)  # that one connection stays silent, later ones answer
    later = await asyncio.gather(*(post(client, f"later {i}") for i in range(3)))
    assert [status for status, _ in later] == [201] * 3
    assert not stuck.done(), "the later posts waited for the silent connection"
    status, body = await stuck
    assert status == 503
    assert body["error"].startswith("database ")
    # Live delivery goes on too.
    delivered = [m["contenido"] for m in await stream.messages(4)]
    assert delivered[0] == "first"
    assert sorted(delivered[1:]) == [f"later {i}" for i in range(3)]
    stream.close()


# The store plays no part: one backend is enough.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_stream_whose_client_stops_reading_is_aborted_on_the_write_timeout(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "WRITE_TIMEOUT", 0.3)
    client = await make_client(max_message_chars=60_000, post_limit_user=0)
    general = client.store.general_id
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (client.http.server.host, client.http.server.port or 0))
    request = f"GET /api/stream?chat_id={general} HTTP/1.1\r\nHost: test\r\n\r\n"
    await loop.sock_sendall(sock, request.encode())
    runner = client.http.server.runner
    assert runner is not None
    server = runner.server
    assert server is not None
    try:
        await eventually(lambda: client.hub.subscriber_count == 1, "the stream is subscribed")
        (stalled,) = server.connections
        while client.hub.subscriber_count:  # until the write to it times out
            await client.post(general, "x" * 60_000)
        # The server let go of the connection, without waiting for the client to read what is
        # still buffered for it (closing would wait for that: forever).
        await eventually(lambda: stalled not in server.connections, "the connection is aborted")
    finally:
        sock.close()


async def test_a_silent_redis_holds_up_no_login_post_or_stream(
    shared_redis: str,  # noqa: F811
    tmp_path: Path,
    aiohttp_client: AiohttpClient,
) -> None:
    port = int(shared_redis.rsplit(":", 1)[1].split("/")[0])
    async with TcpProxy(port) as proxy:
        settings = Settings(
            database_url=f"sqlite:///{tmp_path}/chat.sqlite3",
            redis_url=f"redis://127.0.0.1:{proxy.port}/0",
            secret="s",
        )
        client = ChatClient(await aiohttp_client(create_app(settings)))
        await client.login("ana")
        proxy.stall()
        # Limits and presence fail open (this process counts alone); fan-out degrades to the
        # database. Nothing waits on Redis for long.
        assert (await answer(client, "POST", "/api/login", json={"username": "beto"}))[0] == 201
        async with asyncio.timeout(WAIT):
            stream = await client.open_stream({"username": "ana"})
        status, body = await post(client, "while redis is silent", "beto")
        assert status == 201, body
        assert [m["id"] for m in await stream.messages(1)] == [body["message"]["id"]]
        status, body = await answer(client, "GET", "/api/chats", params={"username": "ana"})
        assert status == 200, body
        stream.close()
        proxy.resume()
        await readyz_until(client, 200)
        await client.http.close()


async def test_starting_against_a_silent_database_fails_instead_of_hanging(
    proxied_mysql: tuple[str, TcpProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mysql, "START_TIMEOUT", 0.5)
    url, proxy = proxied_mysql
    proxy.stall()  # the TCP connect succeeds; the handshake gets no answer
    server = TestServer(create_app(Settings(database_url=url, secret="s")))
    starting = asyncio.create_task(server.start_server())
    try:
        done, _ = await asyncio.wait([starting], timeout=WAIT)
        assert done, "the start hung"
        with pytest.raises(TimeoutError):
            starting.result()
    finally:
        starting.cancel()
        await server.close()
    assert proxy.held, "the server did reach the database's port"
