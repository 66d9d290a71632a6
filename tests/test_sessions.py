"""Sessions that end: a token names a session, which expires, is renewed while used, and ends at
logout or by the admin, on every process, with its open streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from chat_server.app import create_app
from chat_server.auth import COOKIE_NAME
from chat_server.sessions import RENEW_EVERY, sessions_key
from chat_server.settings import Settings

from .chat_client import AiohttpClient, ChatClient, Stream
from .tcp_proxy import TcpProxy
from .test_scale_out import shared_redis  # noqa: F401 - fixture
from .test_security import make_browser  # noqa: F401 - fixture
from .waiting import eventually

MakeClient = Callable[..., Awaitable[ChatClient]]
DAY = 86_400


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def status(client: ChatClient, method: str, path: str, **kwargs: Any) -> int:
    async with client.http.request(method, path, **kwargs) as resp:
        await resp.read()
        return resp.status


async def token_works(client: ChatClient, token: str) -> bool:
    code = await status(client, "GET", "/api/me", headers=bearer(token))
    assert code in (200, 401), code
    return code == 200


def move_clock(client: ChatClient, seconds: float) -> None:
    """The sessions' wall clock, `seconds` ahead of the real one (expiries are wall-clock times)."""
    client.app[sessions_key].clock = lambda: time.time() + seconds


async def test_logout_ends_the_session_its_streams_and_nothing_else(client: ChatClient) -> None:
    first = (await client.login("ana"))["token"]
    second = (await client.login("ana"))["token"]  # another device: another session
    assert first != second
    general = client.store.general_id
    by_token = await client.open_stream({"token": first})
    by_header = await client.open_stream({"chat_id": general}, headers=bearer(first))
    other_device = await client.open_stream({"token": second})

    assert await client.call("POST", "/api/logout", headers=bearer(first), status=200) == {"ok": True}

    assert await by_token.ended()
    assert await by_header.ended()
    for route in [("GET", "/api/me"), ("GET", "/api/chats"), ("GET", "/api/stream")]:
        body = await client.call(*route, headers=bearer(first), status=401)
        assert body["error"].startswith("invalid or expired token")
    await client.call("GET", "/api/stream", params={"token": first}, status=401)
    post = {"chat_id": general, "contenido": "x"}
    await client.call("POST", "/api/messages", json=post, headers=bearer(first), status=401)
    # The other session goes on, stream included.
    assert await token_works(client, second)
    sent = await client.call("POST", "/api/messages", json=post, headers=bearer(second), status=201)
    assert await other_device.messages(1) == [sent["message"]]
    other_device.close()
    # Logging out again, or without any session, is harmless.
    await client.call("POST", "/api/logout", headers=bearer(first), status=200)
    await client.call("POST", "/api/logout", status=200)


async def test_logout_by_cookie_ends_the_cookie_session(
    make_browser: MakeClient,  # noqa: F811
) -> None:
    browser = await make_browser()
    token = (await browser.login("ana", status=201))["token"]
    stream = await browser.open_stream()
    await browser.call("POST", "/api/logout", status=200)
    assert await stream.ended()
    # Even a client that kept the cookie's token gets nothing from it now.
    assert not await token_works(browser, token)
    jar = browser.http.session.cookie_jar
    jar.update_cookies({COOKIE_NAME: token}, browser.http.make_url("/"))
    await browser.call("GET", "/api/me", status=401)


async def test_sessions_expire_unless_used_and_are_renewed_at_most_daily(make_client: MakeClient) -> None:
    client = await make_client(session_days=3)
    store = client.store
    token = (await client.login("ana"))["token"]
    key = client.app[sessions_key].key_of(token)
    assert key is not None
    found = await store.sessions.find(key, 0)
    assert found is not None
    created_expiry = found[1]

    # Used within the day: not renewed (no write).
    move_clock(client, RENEW_EVERY - 60)
    assert await token_works(client, token)
    assert await store.sessions.find(key, 0) == found
    # Used after a day: renewed, three days from now.
    move_clock(client, RENEW_EVERY + 60)
    assert await token_works(client, token)
    renewed = await store.sessions.find(key, 0)
    assert renewed is not None
    assert renewed[1] - created_expiry == pytest.approx(RENEW_EVERY + 60, abs=5)
    # Not used for longer than its life: ended, and not brought back by using it.
    move_clock(client, RENEW_EVERY + 60 + 3 * DAY + 1)
    assert not await token_works(client, token)
    move_clock(client, 0)
    other = (await client.login("beto"))["token"]
    move_clock(client, 3 * DAY + 1)
    assert not await token_works(client, other)  # the cache does not outlive the expiry either


async def test_a_user_keeps_at_most_fifty_sessions_and_the_oldest_end(make_client: MakeClient) -> None:
    client = await make_client()
    tokens = [(await client.login("ana"))["token"] for _ in range(52)]
    assert not await token_works(client, tokens[0])
    assert not await token_works(client, tokens[1])
    assert await token_works(client, tokens[2])
    assert await token_works(client, tokens[-1])


async def test_a_login_with_the_clients_own_session_keeps_it(make_client: MakeClient) -> None:
    client = await make_client()
    token = (await client.login("ana"))["token"]
    again = await client.call("POST", "/api/login", json={"username": "ANA"}, headers=bearer(token))
    assert again["token"] == token
    other = await client.call("POST", "/api/login", json={"username": "beto"}, headers=bearer(token))
    assert other["token"] != token  # a session of ana does not make a session of beto


async def test_the_admin_or_the_user_ends_all_of_a_users_sessions(make_client: MakeClient) -> None:
    client = await make_client(admin_password="secreto")
    admin = await client.call("POST", "/api/login", json={"username": "admin", "password": "secreto"})
    ana = [(await client.login("ana"))["token"] for _ in range(3)]
    beto = (await client.login("beto"))["token"]
    ana_id = (await client.call("GET", "/api/me", headers=bearer(ana[0])))["user"]["id"]
    streams = [await client.open_stream({"token": t}) for t in ana]

    path = f"/api/users/{ana_id}/sessions"
    refused = await client.call("DELETE", path, headers=bearer(beto), status=403)
    assert "error" in refused
    await client.call("DELETE", path, status=401)
    await client.call("DELETE", "/api/users/999999/sessions", headers=bearer(admin["token"]), status=404)
    ended = await client.call("DELETE", path, headers=bearer(admin["token"]), status=200)
    assert ended["ended"] == 3
    assert ended["user"]["username"] == "ana"
    for stream in streams:
        assert await stream.ended()
    for token in ana:
        assert not await token_works(client, token)
    assert await token_works(client, beto)
    assert await token_works(client, admin["token"])
    # A user may end their own sessions everywhere, this one included.
    mine = (await client.login("beto"))["token"]
    beto_id = (await client.call("GET", "/api/me", headers=bearer(mine)))["user"]["id"]
    body = await client.call("DELETE", f"/api/users/{beto_id}/sessions", headers=bearer(mine), status=200)
    assert body["ended"] == 2
    assert not await token_works(client, mine)


async def test_logout_on_one_process_ends_the_session_on_another(
    settings: Settings,
    aiohttp_client: AiohttpClient,
    shared_redis: str,  # noqa: F811
) -> None:
    async def process() -> ChatClient:
        return ChatClient(
            await aiohttp_client(
                create_app(Settings(database_url=settings.database_url, redis_url=shared_redis, secret="s"))
            )
        )

    a, b = await process(), await process()
    token = (await a.login("ana"))["token"]
    assert await token_works(b, token)  # b has the session in its cache now
    on_b: Stream = await b.open_stream({"token": token})
    await a.call("POST", "/api/logout", headers=bearer(token), status=200)
    assert await on_b.ended()
    assert not await token_works(b, token)
    await eventually(lambda: b.hub.subscriber_count == 0, "b's stream is gone")


async def test_head_on_the_stream_routes_has_no_body_and_opens_no_stream(client: ChatClient) -> None:
    token = (await client.login("ana"))["token"]
    general = client.store.general_id
    for params in ({"chat_id": general}, {"token": token}):
        async with asyncio.timeout(5):
            async with client.http.head("/api/stream", params=params) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                assert await resp.read() == b""
    async with client.http.head("/api/stream") as resp:
        assert resp.status == 401  # the same refusal as a GET
    assert client.hub.subscriber_count == 0


async def test_a_stream_set_up_for_a_session_that_just_ended_is_closed(client: ChatClient) -> None:
    """The ending may arrive between the stream's identity check and its registration."""
    sessions = client.app[sessions_key]
    general = client.store.general_id
    live, ending = [await sessions.find((await client.login(n))["token"]) for n in ("ana", "beto")]
    assert live is not None
    assert ending is not None
    await sessions.end(ending)
    async with client.hub.subscribe([general]) as sub, sessions.streaming(ending, sub):
        assert sub.closed
    async with client.hub.subscribe([general]) as sub, sessions.streaming(live, sub):
        assert not sub.closed


async def test_a_renewal_the_database_cannot_take_does_not_refuse_a_live_session(
    proxied_mysql: tuple[str, TcpProxy], aiohttp_client: AiohttpClient
) -> None:
    url, proxy = proxied_mysql
    client = ChatClient(await aiohttp_client(create_app(Settings(database_url=url, secret="s"))))
    token = (await client.login("ana"))["token"]
    assert await token_works(client, token)  # cached, with ana
    move_clock(client, RENEW_EVERY + 60)  # a renewal is due
    proxy.stall()
    async with asyncio.timeout(10):
        assert await token_works(client, token)  # the renewal failed; the session did not
    proxy.resume()
    assert await token_works(client, token)
    key = client.app[sessions_key].key_of(token)
    assert key is not None
    renewed = await client.store.sessions.find(key, 0)
    assert renewed is not None
    assert renewed[1] > time.time() + 30 * DAY  # renewed by the request after
