"""Rate limits on posting and login, the cap on open streams, in one process and across
processes through Redis (and without Redis when it goes away)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio
from aiohttp import ClientResponse

from chat_server.app import create_app
from chat_server.errors import TooManyRequests
from chat_server.leases import Lease
from chat_server.limits import SWEEP_AT, LocalCounters, Rate, RedisStreamSlots
from chat_server.redis_batch import SLICE, RedisBatch
from chat_server.settings import Settings

from .chat_client import WAIT, AiohttpClient, ChatClient
from .redis_counts import Watch
from .services import PrivateRedis
from .test_scale_out import private_redis, shared_redis  # noqa: F401 - fixtures

MakeClient = Callable[..., Awaitable[ChatClient]]
# Short enough for a test to wait out, long enough that a handful of calls share one window.
WINDOW = 1.0


async def status_of(client: ChatClient, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.http.request(method, path, **kwargs) as resp:
        return resp.status, await _refusal(resp)


async def _refusal(resp: ClientResponse) -> Any:
    """The body; for a 429, checked: Retry-After in whole seconds, the same in the body."""
    body = await resp.json(content_type=None)
    if resp.status == 429:
        retry_after = int(resp.headers["Retry-After"])
        assert retry_after >= 1
        assert body["retry_after"] == retry_after
        assert set(body) <= {"error", "retry_after", "limit"}
        assert body["error"].startswith("too many")
    return body


async def post(client: ChatClient, username: str, text: str = "hola") -> int:
    body = {"chat_id": client.store.general_id, "contenido": text, "username": username}
    return (await status_of(client, "POST", "/api/messages", json=body))[0]


async def until_refused(
    attempt: Callable[[], Awaitable[int]], limit: int, passes: tuple[int, ...] = (200, 201)
) -> int:
    """Attempts in a row until one gets 429; how many passed before it. Calls this quick fit in
    at most two windows, so at most 2 * limit can pass."""
    passed = 0
    while (status := await attempt()) != 429:
        assert status in passes, status
        passed += 1
        assert passed <= 2 * limit, "never refused"
    return passed


async def until_accepted(attempt: Callable[[], Awaitable[int]]) -> None:
    """Retry until the window has passed and a call goes through again (fails after WAIT)."""
    async with asyncio.timeout(WAIT):
        while await attempt() == 429:  # noqa: ASYNC110 - the window ends on the clock, not on an event
            await asyncio.sleep(0.05)


def test_fixed_windows_count_per_key_and_start_again_on_the_clock() -> None:
    counters = LocalCounters()
    rate = Rate(limit=2, window=10.0)
    assert [counters.hit("a", rate, now) for now in (100.0, 101.0)] == [None, None]
    assert counters.hit("a", rate, 109.5) == pytest.approx(0.5)  # the third in 100-110
    assert counters.hit("b", rate, 109.5) is None  # another key counts apart
    assert counters.hit("a", rate, 110.0) is None  # a new window


def test_ended_windows_are_swept_so_counters_stay_bounded() -> None:
    counters = LocalCounters()
    rate = Rate(limit=1, window=1.0)
    for n in range(3 * SWEEP_AT):
        counters.hit(f"user{n}", rate, float(n // 10))  # ten keys a second, each seen once
    assert len(counters._counts) <= SWEEP_AT


async def test_posting_is_limited_per_user_and_recovers_after_the_window(make_client: MakeClient) -> None:
    client = await make_client(post_limit_user=3, post_limit_address=0, rate_window=WINDOW)
    passed = await until_refused(lambda: post(client, "ana"), 3)
    assert 3 <= passed <= 6
    # Another user is not held back by ana's limit.
    assert await post(client, "beto") == 201
    await until_accepted(lambda: post(client, "ana"))
    assert len(await client.history(client.store.general_id)) == passed + 2


async def test_posting_is_limited_per_address_whatever_the_username(make_client: MakeClient) -> None:
    client = await make_client(post_limit_user=0, post_limit_address=4, rate_window=WINDOW)
    names = iter(f"user{n}" for n in range(100))
    passed = await until_refused(lambda: post(client, next(names)), 4)
    assert 4 <= passed <= 8
    await until_accepted(lambda: post(client, next(names)))


async def test_legacy_posts_are_limited_too(make_client: MakeClient) -> None:
    client = await make_client(post_limit_user=2, post_limit_address=0, rate_window=WINDOW)

    async def send() -> int:
        return (await status_of(client, "POST", "/api/send", json={"usuario": "zoe", "mensaje": "x"}))[0]

    assert 2 <= await until_refused(send, 2) <= 4
    await until_accepted(send)


async def test_failed_logins_are_limited_per_user_and_per_address(make_client: MakeClient) -> None:
    client = await make_client(
        login_limit_user=2, login_limit_address=0, admin_password="secreto", rate_window=WINDOW
    )

    async def guess() -> int:
        return (await status_of(client, "POST", "/api/login", json={"username": "admin", "password": "x"}))[0]

    # Wrong guesses are let through (401) up to the limit, then refused before being checked.
    assert 2 <= await until_refused(guess, 2, passes=(401,)) <= 4
    assert (await client.login("ana", status=201))["token"]
    await until_accepted(guess)

    by_address = await make_client(
        login_limit_user=0, login_limit_address=3, admin_password="secreto", rate_window=WINDOW
    )
    # Successes do not count: logging in again and again is not a failure.
    for _ in range(6):
        await by_address.login("ana")
    names = iter(["admin", "ADMIN", "Admin"] * 10)

    async def guess_any() -> int:
        body = {"username": next(names), "password": "x"}
        return (await status_of(by_address, "POST", "/api/login", json=body))[0]

    assert 3 <= await until_refused(guess_any, 3, passes=(401,)) <= 6
    await until_accepted(guess_any)


async def test_new_users_are_limited_per_address_at_login_and_when_posting(make_client: MakeClient) -> None:
    # A window longer than the test: every count below falls in one window.
    client = await make_client(signup_limit_address=3, post_limit_address=0, rate_window=3600.0)
    names = iter(f"user{n}" for n in range(100))

    async def login_someone_new() -> int:
        return (await status_of(client, "POST", "/api/login", json={"username": next(names)}))[0]

    assert await until_refused(login_someone_new, 3) == 3
    await client.login("user0", status=200)  # not new: not counted, not refused
    assert await post(client, "user1") == 201
    assert await post(client, next(names)) == 429  # posting under a new name makes a user too
    assert await client.store.get_user(username="user3") is None  # refused at login
    assert await client.store.get_user(username="user4") is None  # refused when posting
    unlimited = await make_client(signup_limit_address=0)
    for n in range(8):
        await unlimited.login(f"free{n}", status=201)


async def test_a_burst_of_first_posts_under_one_new_name_is_one_sign_up(make_client: MakeClient) -> None:
    """A client that sends its first posts at once, under a name new to the server: they all
    found no such user, but they make one user, counted once against the address's limit."""
    client = await make_client(signup_limit_address=2, post_limit_address=0, rate_window=3600.0)
    burst = await asyncio.gather(*(post(client, "ráfaga", f"m{n}") for n in range(80)))
    assert burst == [201] * 80
    assert await post(client, "otra") == 201  # the second of two sign-ups
    assert await post(client, "tercera") == 429


async def test_open_streams_are_capped_per_user_and_free_again_when_one_closes(
    make_client: MakeClient,
) -> None:
    client = await make_client(max_streams_per_user=2)
    await client.login("ana")
    general = client.store.general_id
    first = await client.open_stream({"username": "ana"})
    second = await client.open_stream({"chat_id": general, "username": "ana"})
    status, body = await status_of(client, "GET", "/api/stream", params={"username": "ana"})
    assert status == 429
    assert body["limit"] == 2
    # Others, and anonymous readers of General, are not held back.
    (await client.open_stream({"username": "admin"})).close()
    anonymous = [await client.open_stream({"chat_id": general}) for _ in range(3)]
    first.close()

    async def open_third() -> int:
        resp = await client.http.get("/api/stream", params={"username": "ana"})
        resp.close()
        return 200 if resp.status == 200 else resp.status

    await until_accepted(open_third)
    for stream in [second, *anonymous]:
        stream.close()


# -- across processes, through Redis ---------------------------------------------------------


@pytest.fixture
def make_process(settings: Settings, aiohttp_client: AiohttpClient) -> MakeClient:
    """Another process on the same database and the given Redis, with its own settings."""

    async def make(redis_url: str, **overrides: Any) -> ChatClient:
        app = create_app(
            Settings(database_url=settings.database_url, redis_url=redis_url, secret="s", **overrides)
        )
        return ChatClient(await aiohttp_client(app))

    return make


async def test_limits_hold_across_processes_sharing_redis(
    make_process: MakeClient,
    shared_redis: str,  # noqa: F811
) -> None:
    limits = {"post_limit_user": 4, "post_limit_address": 0, "max_streams_per_user": 2, "rate_window": WINDOW}
    a, b = await make_process(shared_redis, **limits), await make_process(shared_redis, **limits)
    turn = iter(range(100))
    passed = await until_refused(lambda: post(a if next(turn) % 2 else b, "ana"), 4)
    assert 4 <= passed <= 8  # one process alone would have let 4 through in each window
    await until_accepted(lambda: post(b, "ana"))

    await a.login("ana")
    on_a = await a.open_stream({"username": "ana"})
    on_b = await b.open_stream({"username": "ana"})
    assert (await status_of(a, "GET", "/api/stream", params={"username": "ana"}))[0] == 429
    on_b.close()

    async def open_on_a() -> int:
        resp = await a.http.get("/api/stream", params={"username": "ana"})
        resp.close()
        return resp.status

    await until_accepted(open_on_a)
    on_a.close()


async def test_without_redis_the_limits_count_in_the_process(
    make_process: MakeClient,
    private_redis: PrivateRedis,  # noqa: F811
) -> None:
    client = await make_process(
        private_redis.url, post_limit_user=3, post_limit_address=0, max_streams_per_user=1, rate_window=WINDOW
    )
    await client.login("ana")
    private_redis.stop()
    passed = await until_refused(lambda: post(client, "ana"), 3)
    assert 3 <= passed <= 6
    await until_accepted(lambda: post(client, "ana"))
    stream = await client.open_stream({"username": "ana"})
    assert (await status_of(client, "GET", "/api/stream", params={"username": "ana"}))[0] == 429
    stream.close()


# -- slow bodies -----------------------------------------------------------------------------


async def test_a_body_sent_a_byte_at_a_time_is_cut_off(make_client: MakeClient) -> None:
    client = await make_client(body_timeout=0.5)
    server = client.http.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /api/messages HTTP/1.1\r\nHost: chat\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )

    async def trickle() -> None:
        for byte in b'{"contenido": "' + b"x" * 900:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)  # the slow sender under test, not a wait for the server

    sender = asyncio.create_task(trickle())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)  # an answer, not a hang
        length = int(next(line for line in head.split(b"\r\n") if line.startswith(b"Content-Length:"))[15:])
        body = await asyncio.wait_for(reader.readexactly(length), WAIT)
    finally:
        sender.cancel()
        writer.close()
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"Connection: close" in head  # aiohttp reads and drops what still comes, then closes
    assert b'"error"' in body
    assert await client.store.get_user(username="x") is None


async def test_a_lost_lease_writes_every_owners_streams_again_and_no_dropped_slot(
    private_redis: PrivateRedis,  # noqa: F811
) -> None:
    """Thousands of streams, many per owner, on a process whose lease was lost: each owner's
    count is written again under the new entry, no MULTI/EXEC holding more than a slice of
    owners, and a slot dropped meanwhile stays dropped. Another process counts them all."""
    client = redis.asyncio.Redis.from_url(private_redis.url)
    batches = [RedisBatch(client), RedisBatch(client)]
    lease, other = (Lease(batch, "ns", f"p{i}", ttl=60) for i, batch in enumerate(batches))
    slots, elsewhere = RedisStreamSlots(lease), RedisStreamSlots(other)
    owners = [str(n) for n in range(3 * SLICE // 2)]
    try:
        await lease.take()
        await other.take()
        async with contextlib.AsyncExitStack() as held:
            for n in range(3 * SLICE):  # two streams per owner
                await held.enter_async_context(slots.hold(owners[n % len(owners)], cap=SLICE))
            dropped = slots.hold(owners[-1], cap=SLICE)  # in the last slice
            await dropped.__aenter__()
            old = lease.entry
            await client.zrem(lease.key, old)  # claimed by another process
            async with Watch(private_redis.url) as seen:
                await asyncio.gather(lease.keep(spread=0), dropped.__aexit__(None, None, None))
            counts = {owner: await client.hget(f"ns:streams:{owner}", lease.entry) for owner in owners}
            assert counts == dict.fromkeys(owners, b"2")
            written = [sum(words[0] == "HSET" for words in t) for t in seen.transactions]
            assert max(written) <= SLICE, written
            # Counted by another process: these two and its own new one.
            async with elsewhere.hold(owners[-1], cap=3):
                pass
            with pytest.raises(TooManyRequests):
                async with elsewhere.hold(owners[-1], cap=2):
                    pass
    finally:
        for batch in batches:
            await batch.close()
        await client.aclose()


async def test_the_streams_of_an_ended_lease_stop_counting_at_once_and_are_swept(
    private_redis: PrivateRedis,  # noqa: F811
) -> None:
    """A process died holding an owner's streams: they stop counting against the cap as soon as
    its lease ends (not a TTL later), and the next process to sweep forgets them."""
    client = redis.asyncio.Redis.from_url(private_redis.url)
    batches = [RedisBatch(client), RedisBatch(client)]
    dead, alive = (Lease(batch, "ns", f"p{i}", ttl=60) for i, batch in enumerate(batches))
    slots, elsewhere = RedisStreamSlots(dead), RedisStreamSlots(alive)
    try:
        await dead.take()
        await alive.take()
        async with contextlib.AsyncExitStack() as held:
            for _ in range(2):
                await held.enter_async_context(slots.hold("o", cap=2))
            with pytest.raises(TooManyRequests):  # counted while the lease lives
                async with elsewhere.hold("o", cap=2):
                    pass
            await client.zadd(dead.key, {dead.entry: time.time() - 1})  # it died a TTL ago
            async with elsewhere.hold("o", cap=1):
                pass
            await alive.keep(spread=0)
            assert await client.hkeys("ns:streams:o") == []
            assert await client.exists(f"ns:streams:of:{dead.entry}") == 0
            assert await client.zscore(dead.key, dead.entry) is None
    finally:
        for batch in batches:
            await batch.close()
        await client.aclose()
