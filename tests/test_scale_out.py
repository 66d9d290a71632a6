"""Several processes behind one Redis: fan-out crosses processes, and Redis faults lose nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis

from chat_server.app import create_app
from chat_server.settings import Settings

from .chat_client import WAIT, AiohttpClient, ChatClient, Follower
from .services import PrivateRedis
from .tcp_proxy import TcpProxy
from .waiting import eventually

# Redis's part does not depend on the store: the embedded one is enough.
ONE_STORE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
SHARED_REDIS = os.environ.get("CHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
Make = Callable[..., Awaitable[ChatClient]]


@pytest.fixture
def shared_redis() -> str:
    try:
        redis.Redis.from_url(SHARED_REDIS, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        reason = f"Redis not reachable at {SHARED_REDIS}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return SHARED_REDIS


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path) as server:
        yield server


@pytest.fixture
def process(settings: Settings, aiohttp_client: AiohttpClient) -> Make:
    """Another server process sharing the database: an app of its own on its own port.
    (`settings` first: the database must outlive the apps, which are torn down first.)"""

    async def make(redis_url: str) -> ChatClient:
        # Dozens of new users from one test client: no cap on sign-ups per address here.
        app = create_app(
            Settings(
                database_url=settings.database_url, redis_url=redis_url, secret="s", signup_limit_address=0
            )
        )
        return ChatClient(await aiohttp_client(app))

    return make


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def follow(session: aiohttp.ClientSession, client: ChatClient, **params: object) -> Follower:
    follower = Follower(session, str(client.http.make_url("/api/stream")), dict(params))
    await follower.start()
    return follower


async def test_messages_posted_on_either_process_reach_streams_on_both(
    process: Make, shared_redis: str
) -> None:
    a, b = await process(shared_redis), await process(shared_redis)
    await a.login("ana")
    dm = await a.dm_id("ana", "admin")
    general = a.store.general_id
    on_a = await a.open_stream({"chat_id": general})
    on_b = await b.open_stream({"chat_id": general})
    ana_on_b = await b.open_stream({"username": "ana"})
    admin_on_a = await a.open_stream({"username": "admin"})

    first = await a.post(general, "desde A", "beto")
    second = await b.post(dm, "desde B", "ana")
    third = await a.post(dm, "respuesta", "admin")

    assert await on_a.messages(1) == [first]
    assert await on_b.messages(1) == [first]
    assert await ana_on_b.messages(3) == [first, second, third]
    assert await admin_on_a.messages(3) == [first, second, third]


async def test_a_dm_made_on_one_process_is_announced_on_the_other(process: Make, shared_redis: str) -> None:
    a, b = await process(shared_redis), await process(shared_redis)
    await a.login("ana")
    await a.login("beto")
    beto_on_b = await b.open_stream({"username": "beto"})
    chat_id = await a.dm_id("ana", "beto")
    event = await beto_on_b.next_event()
    assert event.event == "chat"
    message = await a.post(chat_id, "hola", "ana")
    assert await beto_on_b.messages(1) == [message]


async def test_concurrent_posts_on_two_processes_arrive_in_id_order_everywhere(
    process: Make, shared_redis: str
) -> None:
    a, b = await process(shared_redis), await process(shared_redis)
    general = a.store.general_id
    streams = [await a.open_stream({"chat_id": general}), await b.open_stream({"chat_id": general})]
    posts = [(a if i % 2 else b).post(general, f"m{i}", f"u{i % 5}") for i in range(200)]
    expected = sorted(m["id"] for m in await asyncio.gather(*posts))
    for stream in streams:
        assert [m["id"] for m in await stream.messages(200)] == expected


async def test_redis_stopped_and_restarted_loses_nothing_on_either_process(
    process: Make, private_redis: PrivateRedis, session: aiohttp.ClientSession
) -> None:
    a, b = await process(private_redis.url), await process(private_redis.url)
    await a.login("ana")
    general = a.store.general_id
    followers = [
        await follow(session, a, chat_id=general),
        await follow(session, b, chat_id=general),
        await follow(session, b, username="ana"),
    ]
    accepted: list[int] = []

    async def post_some(count: int, tag: str) -> None:
        for i in range(count):
            client = a if i % 2 else b
            accepted.append((await client.post(general, f"{tag} {i}", "ana"))["id"])

    try:
        await post_some(10, "before")
        private_redis.stop()
        await post_some(10, "while down")
        private_redis.start()
        await post_some(10, "after")
        for follower in followers:
            assert await follower.wait_for(len(accepted)) == sorted(accepted)
        await eventually(lambda: a.broker.healthy and b.broker.healthy, "both use Redis again")
        await post_some(4, "recovered")
        for follower in followers:
            assert await follower.wait_for(len(accepted)) == sorted(accepted)
    finally:
        for follower in followers:
            await follower.stop()


async def test_a_process_does_not_decode_its_own_message_announcements(
    process: Make, shared_redis: str
) -> None:
    """Each process hears every announcement on the channel, its own included: its own messages
    were offered when stored, so only the other processes' are decoded and applied."""
    a, b = await process(shared_redis), await process(shared_redis)
    general = a.store.general_id
    on_a, on_b = await a.open_stream({"chat_id": general}), await b.open_stream({"chat_id": general})
    from_a = [await a.post(general, f"desde A {n}", "ana") for n in range(3)]
    assert await on_b.messages(3) == from_a
    # Redis delivers one channel in publish order: once A has B's message, it has heard its own.
    from_b = await b.post(general, "desde B", "beto")
    assert await on_a.messages(4) == [*from_a, from_b]
    assert await on_b.messages(1) == [from_b]
    assert (a.broker.messages_heard, b.broker.messages_heard) == (1, 3)
    # Each of its own heard back was timed (Redis's hop: chat_announcement_round_trip_seconds).
    assert a.broker.announcer.round_trip.count == 3
    await eventually(lambda: b.broker.announcer.round_trip.count == 1, "B heard its own back")


@ONE_STORE
async def test_other_processes_are_told_before_this_one_writes_its_own_streams(
    process: Make, private_redis: PrivateRedis
) -> None:
    """A process writes a message to its own streams only once its announcement is on its way:
    else, for a chat with thousands of streams on every process, the others would start writing
    their shares only after this one had written all of its own. Nor does it wait for Redis to
    answer (chat_server/announcer.py): with Redis frozen, the message reaches this process's
    streams while the broker still trusts Redis, and Redis passes the announcement on once it
    runs again. (A process that waited for an answer would have given up on Redis first.)"""
    a = await process(private_redis.url)
    assert private_redis.process is not None
    listener = redis.Redis.from_url(private_redis.url)
    pubsub = listener.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(a.broker.channel)
    assert pubsub.get_message(timeout=WAIT)["type"] == "subscribe"
    general = a.store.general_id
    await a.login("ana")  # signed up, and her DM with admin announced, while Redis runs
    try:
        async with a.hub.subscribe([general]) as sub:
            sub.start_live(a.hub.released_id)
            for n in range(3):
                private_redis.process.send_signal(signal.SIGSTOP)
                try:
                    posting = asyncio.create_task(a.post(general, f"m{n}", "ana"))
                    (event,) = await sub.next_batch()
                    assert a.broker.healthy, "written here only after giving up on Redis"
                finally:
                    private_redis.process.send_signal(signal.SIGCONT)
                assert event.id is not None
                assert event.id in _announced(pubsub, event.id), "never announced"
                assert (await posting)["id"] == event.id
    finally:
        pubsub.close()
        listener.close()


@ONE_STORE
async def test_an_announcement_redis_never_passes_on_is_noticed_and_its_message_delivered(
    process: Make, private_redis: PrivateRedis, session: aiohttp.ClientSession
) -> None:
    """Announcements get no answer (announcer.py): Redis's acknowledgement is the announcement
    coming back on the process's own subscription. The connection they go on goes silent (a
    stalled link, a proxy): the process notices that its message did not come back, and the
    message reaches the other process's streams all the same (from the database)."""
    async with TcpProxy(private_redis.port) as proxy:
        a = await process(f"redis://127.0.0.1:{proxy.port}/0")
        b = await process(private_redis.url)
        general = a.store.general_id
        await a.login("ana")
        follower = await follow(session, b, chat_id=general)
        try:
            posted = [(await a.post(general, "antes", "ana"))["id"]]
            assert await follower.wait_for(1) == posted
            resyncs = a.broker.resyncs
            # Only the announcer sends message announcements: its connection goes silent.
            proxy.silence_when(b'"type":"done"')
            posted.append((await a.post(general, "perdido", "ana"))["id"])
            proxy.silence_when(None)
            await eventually(lambda: a.broker.resyncs > resyncs, "A noticed its announcement never came back")
            assert await follower.wait_for(2) == posted
            posted.append((await a.post(general, "después", "ana"))["id"])  # on a new connection
            assert await follower.wait_for(3) == posted
        finally:
            await follower.stop()


@ONE_STORE
async def test_a_redis_that_refuses_client_reply_gets_answered_announcements(
    process: Make, private_redis: PrivateRedis, session: aiohttp.ClientSession
) -> None:
    """An ACL may refuse CLIENT REPLY: every publish on the announcer's connection would then be
    answered into a socket that nobody reads, until it filled. It is checked when connecting,
    and such a Redis gets answered publishes: messages still cross processes through Redis."""
    admin = redis.Redis.from_url(private_redis.url, decode_responses=True)
    admin.acl_setuser(
        "chat", enabled=True, nopass=True, keys=["*"], channels=["*"], commands=["+@all", "-client|reply"]
    )
    url = f"redis://chat@127.0.0.1:{private_redis.port}/0"
    a, b = await process(url), await process(url)
    general = a.store.general_id
    await a.login("ana")
    follower = await follow(session, b, chat_id=general)
    try:
        posted = [(await a.post(general, f"m{n}", "ana"))["id"] for n in range(3)]
        assert await follower.wait_for(3) == posted
        assert (a.broker.healthy, b.broker.healthy) == (True, True)  # through Redis, not the table
        names = [c["name"] for c in admin.client_list()]
        assert not [name for name in names if name.startswith("chat_server:announcer")], names
    finally:
        await follower.stop()
        admin.close()


def _announced(pubsub: redis.client.PubSub, awaited: int) -> set[int]:
    """Ids of the message announcements received, until `awaited` is among them or WAIT passes."""
    ids: set[int] = set()
    deadline = time.monotonic() + WAIT
    while awaited not in ids and (left := deadline - time.monotonic()) > 0:
        item = pubsub.get_message(timeout=left)
        event = json.loads(item["data"]) if item and item["type"] == "message" else {}
        if event.get("type") == "done":
            ids.add(event["message"]["id"])
    return ids
