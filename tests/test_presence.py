"""Presence: online while a stream is open on any process, announced to DM partners."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio

from chat_server import jsonutil, redis_policy
from chat_server.app import create_app
from chat_server.leases import Lease
from chat_server.presence import RedisPresence
from chat_server.redis_batch import SLICE, RedisBatch
from chat_server.settings import Settings

from .chat_client import WAIT, AiohttpClient, ChatClient, Follower, Stream
from .databases import throwaway_database
from .redis_counts import Watch
from .services import ChatServer, PrivateRedis
from .tcp_proxy import TcpProxy
from .test_scale_out import Make, private_redis, process, shared_redis  # noqa: F401 - fixtures
from .waiting import eventually


async def next_presence(stream: Stream) -> dict[str, object]:
    # Bounded as a whole: heartbeats keep each read within its own timeout.
    async with asyncio.timeout(WAIT):
        while True:
            event = await stream.next_event()
            if event.event == "presence":
                data: dict[str, object] = jsonutil.loads(event.data or "")
                return data


async def online_in_admin_inbox(client: ChatClient, username: str) -> bool:
    for chat in await client.chats("admin"):
        for participant in chat["participants"]:
            if participant["username"] == username:
                return bool(participant["online"])
    raise AssertionError(f"{username} is not in the admin's inbox")


async def open_when_a_slot_frees(client: ChatClient, params: dict[str, str | int]) -> Stream:
    """Open a stream as soon as the server has let go of one of the user's (429 until then)."""

    async def opened() -> Stream | None:
        response = await client.http.get("/api/stream", params=params)
        if response.status == 429:
            response.release()
            return None
        assert response.status == 200, (response.status, await response.text())
        return Stream(response)

    async with asyncio.timeout(WAIT):
        while (stream := await opened()) is None:  # noqa: ASYNC110 - the server tells nothing else
            await asyncio.sleep(0.01)
    return stream


async def test_opening_and_closing_streams_flips_online_and_tells_dm_partners(
    make_client: Callable[..., Awaitable[ChatClient]],
) -> None:
    # Two streams per user at most: a third opens only once the server has ended one of them
    # completely (its stream slot is the last thing released, after presence).
    client = await make_client(max_streams_per_user=2)
    ana = (await client.login("ana"))["user"]
    admin_stream = await client.open_stream({"username": "admin"})
    assert not await online_in_admin_inbox(client, "ana")

    first = await client.open_stream({"username": "ana"})
    assert await next_presence(admin_stream) == {"user_id": ana["id"], "username": "ana", "online": True}
    assert await online_in_admin_inbox(client, "ana")
    assert await online_in_admin_inbox(client, "admin")

    second = await client.open_stream({"chat_id": client.store.general_id, "username": "ana"})
    first.close()
    third = await open_when_a_slot_frees(client, {"chat_id": client.store.general_id, "username": "ana"})
    # Still online through the second stream: the admin was told nothing before ana's next message.
    assert await online_in_admin_inbox(client, "ana")
    posted = await client.post(await client.dm_id("ana", "admin"), "sigo aquí")
    event = await admin_stream.next_event()
    assert (event.event, event.id) == ("message", str(posted["id"])), event

    second.close()
    third.close()
    assert await next_presence(admin_stream) == {"user_id": ana["id"], "username": "ana", "online": False}
    assert not await online_in_admin_inbox(client, "ana")


async def test_presence_crosses_processes(process: Make, shared_redis: str) -> None:  # noqa: F811
    a, b = await process(shared_redis), await process(shared_redis)
    ana = (await a.login("ana"))["user"]
    admin_on_a = await a.open_stream({"username": "admin"})
    ana_on_b = await b.open_stream({"username": "ana"})
    assert await next_presence(admin_on_a) == {"user_id": ana["id"], "username": "ana", "online": True}
    assert await online_in_admin_inbox(a, "ana")
    ana_on_b.close()
    assert (await next_presence(admin_on_a))["online"] is False
    assert not await online_in_admin_inbox(a, "ana")


@pytest.fixture
def doomed_process(tmp_path: Path, shared_redis: str) -> Iterator[tuple[str, ChatServer]]:  # noqa: F811
    """A server process (to be killed) sharing a database and Redis with the test's own app."""
    with throwaway_database() as url:
        env = {"DATABASE_URL": url, "REDIS_URL": shared_redis, "CHAT_PRESENCE_TTL": "1.5"}
        server = ChatServer(tmp_path, env)
        server.start()
        try:
            yield url, server
        finally:
            server.kill()


async def test_a_killed_process_users_go_offline_within_the_expiry(
    doomed_process: tuple[str, ChatServer],
    shared_redis: str,  # noqa: F811
    aiohttp_client: AiohttpClient,
) -> None:
    url, doomed = doomed_process
    settings = Settings(database_url=url, redis_url=shared_redis, presence_ttl=1.5, secret="s")
    here = ChatClient(await aiohttp_client(create_app(settings)))
    ana = (await here.login("ana"))["user"]
    admin_here = await here.open_stream({"username": "admin"})
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"{doomed.base}/api/stream", params={"username": "ana"})
        assert response.status == 200
        assert await next_presence(admin_here) == {"user_id": ana["id"], "username": "ana", "online": True}
        doomed.kill()
        response.close()
    assert await next_presence(admin_here) == {"user_id": ana["id"], "username": "ana", "online": False}
    assert not await online_in_admin_inbox(here, "ana")


async def test_a_process_paused_past_its_lease_comes_back_with_its_users_online(
    doomed_process: tuple[str, ChatServer],
    shared_redis: str,  # noqa: F811
    aiohttp_client: AiohttpClient,
) -> None:
    """A process frozen longer than the TTL (a VM pause, a long stall) loses its lease: ana,
    whose stream is on it, stops counting as online. When it runs again, she is online again
    (it writes its users under a new entry; or, if its broker resynced and ended her stream,
    her EventSource reconnects). Read from the admin's chat list: a resync may end streams."""
    url, paused = doomed_process
    settings = Settings(database_url=url, redis_url=shared_redis, presence_ttl=1.5, secret="s")
    here = ChatClient(await aiohttp_client(create_app(settings)))
    await here.login("ana")
    assert paused.process is not None
    async with aiohttp.ClientSession() as session:
        ana_there = Follower(session, f"{paused.base}/api/stream", {"username": "ana"})
        await ana_there.start()
        try:
            await inbox_says(here, "ana", online=True)
            paused.process.send_signal(signal.SIGSTOP)
            try:
                await inbox_says(here, "ana", online=False)
            finally:
                paused.process.send_signal(signal.SIGCONT)
            await inbox_says(here, "ana", online=True)
        finally:
            await ana_there.stop()


async def inbox_says(client: ChatClient, username: str, *, online: bool) -> None:
    """Wait until the admin's chat list shows the user online (or not): no event says when."""
    async with asyncio.timeout(WAIT):
        while await online_in_admin_inbox(client, username) != online:  # noqa: ASYNC110 - no event exists
            await asyncio.sleep(0.05)


async def test_the_users_of_a_lost_lease_are_told_gone_then_back(
    private_redis: PrivateRedis,  # noqa: F811
) -> None:
    """p0 lost its lease (paused past the TTL); p1 claims it and tells ana's partners she went
    offline. When p0 renews, it finds its lease gone, writes ana again under a new entry and
    tells her partners she is back; bea, online on p1 too, was never told gone or back."""
    announced: list[tuple[str, int, bool]] = []

    def announcer(name: str) -> Callable[[int, bool], Awaitable[None]]:
        async def announce(user_id: int, online: bool) -> None:
            announced.append((name, user_id, online))

        return announce

    client = redis.asyncio.Redis.from_url(private_redis.url)
    batches = [RedisBatch(client), RedisBatch(client)]
    leases = [Lease(batch, "ns", f"p{i}", ttl=60) for i, batch in enumerate(batches)]
    p0, p1 = (RedisPresence(announcer(f"p{i}"), lease) for i, lease in enumerate(leases))
    ana, bea = 7, 8
    try:
        for lease in leases:
            await lease.take()
        await p0._enter(ana)
        await p0._enter(bea)
        await p1._enter(bea)
        await eventually(lambda: len(announced) == 2, "ana and bea are announced online")
        announced.clear()
        await client.zadd(leases[0].key, {leases[0].entry: time.time() - 1})  # p0's ran out
        await leases[1].keep(spread=0)
        assert announced == [("p1", ana, False)]
        await leases[0].keep(spread=0)
        await eventually(lambda: len(announced) == 2, "ana is announced back")
        assert announced == [("p1", ana, False), ("p0", ana, True)]
        assert await p1.online([ana, bea]) == {ana, bea}
    finally:
        for presence in (p0, p1):
            await presence.close()
        for batch in batches:
            await batch.close()
        await client.aclose()


async def test_processes_joining_or_leaving_a_user_at_once_announce_it_exactly_once(
    private_redis: PrivateRedis,  # noqa: F811
) -> None:
    """Two processes whose first streams of the same users open at the same moment: each user
    is announced online once (not twice, not never); closing them at once, offline once."""
    announced: list[tuple[int, bool]] = []

    async def announce(user_id: int, online: bool) -> None:
        announced.append((user_id, online))

    clients = [redis.asyncio.Redis.from_url(private_redis.url) for _ in range(2)]
    batches = [RedisBatch(client) for client in clients]
    leases = [Lease(batch, "ns", f"p{i}", ttl=60) for i, batch in enumerate(batches)]
    processes = [RedisPresence(announce, lease) for lease in leases]
    users = range(1, 21)
    try:
        await asyncio.gather(*(lease.take() for lease in leases))
        await asyncio.gather(*(p._enter(u) for u in users for p in processes))
        assert await processes[0].online(users) == set(users)
        await eventually(lambda: len(announced) >= len(users), "the users are announced online")
        # Leaving waits for the user's announcements, made in order: all are made by now.
        await asyncio.gather(*(p._exit(u) for u in users for p in processes))
        assert await processes[1].online(users) == set()
        assert sorted(announced) == sorted([(u, True) for u in users] + [(u, False) for u in users])
        assert announced.index((7, True)) < announced.index((7, False))
    finally:
        for presence, batch, client in zip(processes, batches, clients, strict=True):
            await presence.close()
            await batch.close()
            await client.aclose()


# A lost lease's rewrite spread in the tests: long enough to tell paced slices from ones sent
# back to back.
SPREAD = 0.6


@pytest.fixture
async def lease(private_redis: PrivateRedis) -> AsyncIterator[Lease]:  # noqa: F811
    """Process p0's lease, taken, on the private Redis."""
    client = redis.asyncio.Redis.from_url(private_redis.url)
    batch = RedisBatch(client)
    lease = Lease(batch, "ns", "p0", ttl=60)
    await lease.take()
    try:
        yield lease
    finally:
        await batch.close()
        await client.aclose()


async def test_keeping_the_lease_is_one_command_however_many_are_online(
    private_redis: PrivateRedis,  # noqa: F811
    lease: Lease,
) -> None:
    """Thousands online: a period's renewal writes nothing per user (it wrote two ZADDs per
    user: 40,000 commands every 10 s for 20,000 streams, 1.6 million a second for 4 million)."""
    presence = RedisPresence(_ignore, lease)
    users = range(1, 3 * SLICE + 1)
    try:
        for start in range(0, len(users), 100):  # each burst well within the call bound on a slow VM
            await asyncio.gather(*(presence._enter(u) for u in users[start : start + 100]))
        ends = await lease.batch.client.zscore(lease.key, lease.entry)
        async with Watch(private_redis.url) as seen:
            await lease.keep(spread=0)
        # The renewal (a script: ZSCORE and ZADD run in it), and the look for ended leases; the
        # connection's set-up aside.
        sent = [words[0] for words in seen.commands if words[0] not in ("MULTI", "EXEC", "HELLO", "CLIENT")]
        assert sorted(sent) == ["EVAL", "ZADD", "ZRANGEBYSCORE", "ZSCORE"], sent
        assert (await lease.batch.client.zscore(lease.key, lease.entry) or 0) > (ends or 0)
        assert await presence.online(users) == set(users)
    finally:
        await presence.close()


async def test_a_lost_lease_writes_everyone_again_under_a_new_entry_a_paced_slice_at_a_time(
    private_redis: PrivateRedis,  # noqa: F811
    lease: Lease,
) -> None:
    """The process's lease was lost (it was paused past the TTL, and another process claimed
    it): its users are written again under a new entry, no MULTI/EXEC holding more than a
    slice of them, the slices paced over the spread; a user who leaves meanwhile is not written
    back, and the old entry is never renewed."""
    presence = RedisPresence(_ignore, lease)
    users = range(1, 3 * SLICE + 2)  # three slices and one more user, who leaves
    leaver = users[-1]
    client = lease.batch.client
    try:
        for start in range(0, len(users), 100):
            await asyncio.gather(*(presence._enter(u) for u in users[start : start + 100]))
        old = lease.entry
        await client.zrem(lease.key, old)  # claimed by another process
        async with Watch(private_redis.url) as seen:
            await asyncio.gather(lease.keep(spread=SPREAD), presence._exit(leaver))
        assert lease.entry != old
        assert await client.zscore(lease.key, old) is None
        held = {int(u) for u in await client.smembers(f"ns:presence:of:{lease.entry}")}
        assert held == set(users) - {leaver}
        assert await presence.online(users) == set(users) - {leaver}
        # SADD per user, and one SADD of the slice's users to the entry's set.
        sadds = [sum(words[0] == "SADD" for words in t) for t in seen.transactions]
        assert max(sadds) <= SLICE + 1, sadds
        # Each slice was sent at least its share of the spread after the one before (a slow
        # machine only widens the gaps).
        slices = [at for at, sadd in zip(seen.exec_times, sadds, strict=True) if sadd > 1]
        assert len(slices) == 3  # the fourth holds only the user who left: nothing to write
        gaps = [later - earlier for earlier, later in itertools.pairwise(slices)]
        assert min(gaps) >= SPREAD / 4 * 0.99, gaps
    finally:
        await presence.close()


async def test_the_users_of_an_ended_lease_are_swept_offline_a_slice_at_a_time(
    private_redis: PrivateRedis,  # noqa: F811
    lease: Lease,
) -> None:
    """A process died with thousands online: the first process to claim its ended lease
    announces each of its users offline once (but not one another live process holds), and no
    read of its users asks Redis for more than a slice (one reply of thousands, parsed in one
    loop turn, stalled the process)."""
    announced: list[tuple[int, bool]] = []

    async def announce(user_id: int, online: bool) -> None:
        announced.append((user_id, online))

    presence = RedisPresence(announce, lease)
    users = range(1, 2 * SLICE + 2)
    also_elsewhere = users[5]
    client = lease.batch.client
    try:
        async with client.pipeline(transaction=False) as pipe:  # what the dead process left
            pipe.zadd(lease.key, {"dead/0": time.time() - 1, "alive/0": time.time() + 60})
            for user_id in users:
                pipe.sadd(f"ns:presence:{user_id}", "dead/0")
            pipe.sadd("ns:presence:of:dead/0", *users)
            pipe.sadd(f"ns:presence:{also_elsewhere}", "alive/0")
            await pipe.execute()
        async with Watch(private_redis.url) as seen:
            await lease.keep(spread=0)
        assert sorted(announced) == [(u, False) for u in users if u != also_elsewhere]
        assert await client.zscore(lease.key, "dead/0") is None
        assert await client.exists("ns:presence:of:dead/0") == 0
        assert await presence.online(users) == {also_elsewhere}
        pops = [words for words in seen.commands if words[0] == "SPOP"]
        assert len(pops) >= 3
        assert all(words[2:] == [str(SLICE)] for words in pops), pops[:3]
    finally:
        await presence.close()


async def test_a_join_redis_missed_is_written_under_a_new_entry_at_the_next_renewal(
    private_redis: PrivateRedis,  # noqa: F811
) -> None:
    """Redis did not answer a user's join (presence failed open: online here only): once it
    answers again, the next renewal writes the user under a new entry, which every process
    then sees, and ends the entry whose write was lost."""
    async with TcpProxy(int(private_redis.url.rsplit(":", 1)[1].split("/")[0])) as proxy:
        client = redis_policy.connect(f"redis://127.0.0.1:{proxy.port}/0")
        direct = redis.asyncio.Redis.from_url(private_redis.url)  # Redis's own view
        batch = RedisBatch(client)
        lease = Lease(batch, "ns", "p0", ttl=60)
        presence = RedisPresence(_ignore, lease)
        try:
            await lease.take()
            old = lease.entry
            proxy.stall()
            await presence._enter(7)  # fails open within the call bound
            assert await presence.online([7]) == {7}  # what this process knows
            proxy.reset()  # the join is lost with its connection
            proxy.resume()
            assert await direct.smembers("ns:presence:7") == set()
            await lease.keep(spread=0)
            assert lease.entry != old
            assert await direct.smembers("ns:presence:7") == {lease.entry.encode()}
            assert await presence.online([7]) == {7}
            assert await direct.zscore(lease.key, old) in (None, 0)  # ended: a sweep claims it
        finally:
            await presence.close()
            await batch.close()
            await client.aclose()
            await direct.aclose()


async def _ignore(user_id: int, online: bool) -> None:
    pass
