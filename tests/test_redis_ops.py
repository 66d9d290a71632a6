"""What two processes ask of Redis per stream connect, post and disconnect, counted by Redis.

Redis's own counters (INFO commandstats and stats) on a private Redis: the commands by name,
the round trips (socket reads Redis processed) and the connections opened. Upper bounds, so a
change that adds a round trip to every connect or a connection to every disconnect fails here.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from chat_server.app import create_app
from chat_server.redis_batch import Commands, RedisBatch
from chat_server.redis_policy import MAX_CONNECTIONS
from chat_server.settings import Settings

from .chat_client import AiohttpClient, ChatClient, Stream
from .redis_counts import RedisCounts
from .services import PrivateRedis
from .test_presence import next_presence

# Per stream connect of a user with a DM (stream cap on): the slot (one transaction: "my count
# here is n", read every process's) and the presence join (one transaction: "anyone else online?"
# and "I am"), each reading which leases are live; then the announcement.
PER_CONNECT = {"multi": 2, "exec": 2, "hset": 1, "sadd": 3, "hgetall": 1, "smembers": 1}
PER_CONNECT |= {"zrangebyscore": 2, "publish": 1}
CONNECT_ROUND_TRIPS = 3
# Per post (rate limits on): the address's counter, then the user's (one transaction each: the
# address is checked before the user is known), and the message's one announcement.
PER_POST = {"multi": 2, "exec": 2, "incrby": 2, "pexpire": 2, "publish": 1}
POST_ROUND_TRIPS = 3
# Per disconnect: the presence leave (one transaction: "I left", "anyone else?"), the
# announcement, the slot's drop.
PER_DISCONNECT = {
    "multi": 2,
    "exec": 2,
    "srem": 3,
    "hdel": 1,
    "smembers": 1,
    "zrangebyscore": 1,
    "publish": 1,
}
DISCONNECT_ROUND_TRIPS = 3
# Each process publishes a heartbeat this often (broker.HEARTBEAT_SECONDS), and the test's own
# INFO calls are round trips too.
HEARTBEATS_PER_SECOND = 0.5
USERS = 24

# Redis's work does not depend on the store: the embedded one is enough.
ONE_STORE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path) as server:
        yield server


def check(counts: RedisCounts, per: dict[str, int], round_trips: int, operations: int) -> dict[str, int]:
    """Each command and the round trips within `operations` times their bound (heartbeats
    aside); the calls."""
    reading = counts.read()
    calls, reads = reading.calls, reading.round_trips
    heartbeats = 2 * math.ceil(reading.seconds * HEARTBEATS_PER_SECOND + 1)
    unexpected = set(calls) - set(per)
    assert not unexpected, f"commands not expected at all: {unexpected}"
    for command, bound in per.items():
        allowed = bound * operations + (heartbeats if command == "publish" else 0)
        assert calls.get(command, 0) <= allowed, (command, calls, operations)
    assert reads <= round_trips * operations + heartbeats, (reads, calls)
    # However many at once, no more connections than the two processes' pools and announcers hold.
    assert reading.connections <= 2 * (MAX_CONNECTIONS + 1)
    return calls


async def two_processes_and_users(
    settings: Settings, private_redis: PrivateRedis, aiohttp_client: AiohttpClient
) -> tuple[ChatClient, ChatClient, list[str]]:
    """Two processes on the private Redis, with a presence TTL long enough that no periodic
    refresh falls into a test, and USERS users (each with a DM with admin)."""
    shared = Settings(
        database_url=settings.database_url, redis_url=private_redis.url, secret="s", presence_ttl=600
    )
    a = ChatClient(await aiohttp_client(create_app(shared)))
    b = ChatClient(await aiohttp_client(create_app(shared)))
    names = [f"user{i}" for i in range(USERS)]
    for name in names:
        await a.login(name)
    return a, b, names


@ONE_STORE
async def test_redis_commands_and_round_trips_per_connect_post_and_disconnect(
    settings: Settings, private_redis: PrivateRedis, aiohttp_client: AiohttpClient
) -> None:
    a, b, names = await two_processes_and_users(settings, private_redis, aiohttp_client)
    dms = {name: await a.dm_id(name, "admin") for name in names}
    admin = await a.open_stream({"username": "admin"})
    counts = RedisCounts(private_redis.url)

    counts.reset()
    streams: list[Stream] = []
    for i, name in enumerate(names):  # one after another: each connect's work is its own
        streams.append(await (a if i % 2 else b).open_stream({"username": name}))
        assert (await next_presence(admin))["online"] is True  # its last step is done
    calls = check(counts, PER_CONNECT, CONNECT_ROUND_TRIPS, USERS)
    assert calls["smembers"] == USERS  # what was bounded did happen

    counts.reset()
    for i, name in enumerate(names):
        await (b if i % 2 else a).post(dms[name], "hola", name)
    calls = check(counts, PER_POST, POST_ROUND_TRIPS, USERS)
    assert calls["incrby"] == 2 * USERS

    counts.reset()
    for stream in streams:  # all at once: a burst of disconnects
        stream.close()
    offline = [await next_presence(admin) for _ in names]
    assert {event["username"] for event in offline if event["online"] is False} == set(names)
    calls = check(counts, PER_DISCONNECT, DISCONNECT_ROUND_TRIPS, USERS)
    assert calls["srem"] >= 2 * USERS  # every presence leave


def incr(key: str) -> Commands:
    return lambda pipe: pipe.incr(key)


def lpush(key: str) -> Commands:
    return lambda pipe: pipe.lpush(key, "x")


async def test_operations_queued_in_one_loop_turn_share_one_round_trip(private_redis: PrivateRedis) -> None:
    client = redis.asyncio.Redis.from_url(private_redis.url)
    batch = RedisBatch(client)
    counts = RedisCounts(private_redis.url)
    try:
        await client.ping()  # connected before counting
        counts.reset()
        replies = await asyncio.gather(*(batch.run(incr(f"k{i % 7}")) for i in range(50)))
        reading = counts.read()
        # Each caller gets its own reply, and Redis saw one MULTI/EXEC of 50 INCRs.
        assert sorted(r[0] for r in replies) == sorted(n // 7 + 1 for n in range(50))
        assert reading.calls == {"multi": 1, "incrby": 50, "exec": 1}
        assert reading.round_trips == 1
        # A refused command fails its own caller only.
        outcomes: list[Any] = await asyncio.gather(
            batch.run(incr("k0")), batch.run(lpush("k1")), return_exceptions=True
        )
        good, bad = outcomes
        assert good == [9]
        assert isinstance(bad, redis.ResponseError)
    finally:
        await batch.close()
        await client.aclose()


@ONE_STORE
async def test_a_burst_of_users_coming_online_is_announced_in_a_few_publishes(
    settings: Settings, private_redis: PrivateRedis, aiohttp_client: AiohttpClient
) -> None:
    """A reconnect storm announces thousands of users at once: their presence changes go out
    together, not one publish (and one wake-up of every process) each."""
    a, b, names = await two_processes_and_users(settings, private_redis, aiohttp_client)
    admin = await b.open_stream({"username": "admin"})
    counts = RedisCounts(private_redis.url)

    counts.reset()
    streams = await asyncio.gather(*(a.open_stream({"username": name}) for name in names))
    online = [await next_presence(admin) for _ in names]
    assert {event["username"] for event in online if event["online"]} == set(names)
    reading = counts.read()
    heartbeats = 2 * math.ceil(reading.seconds * HEARTBEATS_PER_SECOND + 1)
    assert reading.calls["publish"] <= heartbeats + USERS // 4, reading.calls
    for stream in streams:
        stream.close()
