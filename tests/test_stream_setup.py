"""Stream setup: what a stream reads and holds while it connects, whatever happens meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from chat_server import redis_policy, service
from chat_server.app import create_app
from chat_server.leases import Lease
from chat_server.limits import RedisStreamSlots
from chat_server.models import Message, User, utc_now
from chat_server.presence import RedisPresence
from chat_server.redis_batch import RedisBatch
from chat_server.settings import Settings

from .chat_client import AiohttpClient, ChatClient
from .tcp_proxy import TcpProxy
from .test_presence import next_presence
from .test_scale_out import shared_redis  # noqa: F401 - the fixture
from .waiting import eventually


async def test_a_per_user_stream_follows_a_dm_made_while_it_replays(
    client: ChatClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A per-user stream holds no list of chats (the hub routes DMs by their members), so a DM
    made and written to while the stream is still replaying reaches it live, once."""
    await client.login("ana")
    await client.login("beto")
    ana = await client.store.get_user(username="ana")
    beto = await client.store.get_user(username="beto")
    assert ana is not None
    assert beto is not None
    first = await client.open_stream({"username": "ana"})  # ana is online: no presence work next
    before = await client.post(client.store.general_id, "antes", "beto")
    replay = client.store.replay_for_user
    sent: list[dict[str, object]] = []

    async def a_dm_is_made_right_after(user: User, after: int, upto: int, limit: int) -> list[Message] | None:
        """The stream's own replay, and then, before it goes on, a new DM and a message in it."""
        missed = await replay(user, after, upto, limit)
        if user.id == ana.id and not sent:
            chat, _ = await service.open_dm(client.app, beto, ana)
            sent.append(await client.post(chat.id, "hola ana", "beto"))
        return missed

    monkeypatch.setattr(client.store, "replay_for_user", a_dm_is_made_right_after)
    second = await client.open_stream({"username": "ana", "last_event_id": before["id"] - 1})
    assert sent, "the stream replayed"
    assert await second.messages(2) == [before, sent[0]]
    assert await first.messages(2) == [before, sent[0]]
    first.close()
    second.close()


async def ana_online_for_beto(client: ChatClient) -> bool:
    """Whether beto's chat list shows ana online (in their DM)."""
    for chat in await client.chats("beto"):
        for participant in chat["participants"]:
            if participant["username"] == "ana":
                return bool(participant["online"])
    raise AssertionError("no DM of beto with ana")


# Generous for calls bounded at 0.5 s each, and shorter than an unbounded call's wait.
REDIS_BOUND = 4.0

# Where the stream's setup waits on the database when the client hangs up: replaying a per-user
# stream (the user's DMs active since), replaying one chat's missed messages. (Announcing a user
# online is not the setup's: see the next test.)
STAGES = ("user replay", "replay")


@pytest.mark.parametrize("stage", STAGES)
async def test_hanging_up_during_stream_setup_releases_its_slot_and_presence(
    proxied_mysql: tuple[str, TcpProxy], aiohttp_client: AiohttpClient, stage: str
) -> None:
    url, proxy = proxied_mysql
    settings = Settings(database_url=url, secret="s", max_streams_per_user=2)
    client = ChatClient(await aiohttp_client(create_app(settings)))
    await client.login("ana")
    await client.login("beto")
    await client.dm_id("beto", "ana")
    general = client.store.general_id
    await client.post(general, "to replay", "beto")
    others = [await client.open_stream({"username": "ana"})]
    params = {"username": "ana"} | ({"chat_id": general} if stage == "replay" else {})
    headers = {"Last-Event-ID": "0"}

    proxy.stall()
    connecting = asyncio.create_task(client.http.get("/api/stream", params=params, headers=headers))
    await eventually(lambda: proxy.held > 0, "the stream's setup waits on the database")
    connecting.cancel()  # the client hangs up
    with contextlib.suppress(asyncio.CancelledError):
        await connecting
    proxy.resume()

    await eventually(lambda: client.hub.subscriber_count == len(others), "the stream is unsubscribed")
    assert await ana_online_for_beto(client)
    # Its slot is free again: ana may open as many streams as the cap allows.
    while len(others) < settings.max_streams_per_user:
        others.append(await client.open_stream({"username": "ana"}))
    assert await ana_online_for_beto(client)
    for stream in others:
        stream.close()
    await eventually(client.hub.is_empty, "every stream is closed")


async def test_a_first_stream_starts_while_the_database_is_silent_and_partners_hear_later(
    proxied_mysql: tuple[str, TcpProxy], aiohttp_client: AiohttpClient
) -> None:
    """Telling a user's DM partners that they came online reads the database, in the background:
    the user's first stream does not wait for it, and the partners hear once the database
    answers; a hang-up meanwhile leaves them told "offline" last."""
    url, proxy = proxied_mysql
    client = ChatClient(await aiohttp_client(create_app(Settings(database_url=url, secret="s"))))
    ana = (await client.login("ana"))["user"]
    await client.login("beto")
    await client.dm_id("beto", "ana")
    beto = await client.open_stream({"username": "beto"})

    proxy.stall()
    first = await client.open_stream({"username": "ana"})  # started: its preamble arrived
    await eventually(lambda: proxy.held > 0, "telling beto waits on the database")
    first.close()
    await eventually(lambda: client.hub.subscriber_count == 1, "ana's stream is closed")
    proxy.resume()
    told = [await next_presence(beto), await next_presence(beto)]
    assert [(t["user_id"], t["online"]) for t in told] == [(ana["id"], True), (ana["id"], False)]
    assert not await ana_online_for_beto(client)
    beto.close()


async def test_setup_cancelled_while_redis_is_silent_leaves_no_slot_and_no_presence(
    shared_redis: str,  # noqa: F811
) -> None:
    announced: list[tuple[int, bool]] = []

    async def announce(user_id: int, online: bool) -> None:
        announced.append((user_id, online))

    ana = User(7, "ana", "user", "N/D", utc_now())
    namespace = f"chat_test:{uuid.uuid4().hex}"
    port = int(shared_redis.rsplit(":", 1)[1].split("/")[0])
    async with TcpProxy(port) as proxy:
        client = redis_policy.connect(f"redis://127.0.0.1:{proxy.port}/0")
        batch = RedisBatch(client)
        lease = Lease(batch, namespace, "p1", ttl=30)
        slots = RedisStreamSlots(lease)
        presence = RedisPresence(announce, lease)
        try:
            proxy.stall()
            # A silent Redis holds up neither (they fail open): well within redis-py's own
            # socket timeout (5 s), which is what an unbounded call waits.
            async with (
                asyncio.timeout(REDIS_BOUND),
                slots.hold(str(ana.id), cap=1),
                presence.online_while(ana),
            ):
                assert await presence.online([ana.id]) == {ana.id}
            for setup in (slots.hold(str(ana.id), cap=1), presence.online_while(ana)):
                held = proxy.held
                entering = asyncio.create_task(setup.__aenter__())
                await eventually(lambda: proxy.held > held, "the setup waits on redis")  # noqa: B023
                entering.cancel()  # the client hung up
                with contextlib.suppress(asyncio.CancelledError):
                    await entering
            # Still silent: this process's own counts decide, and they hold nothing.
            async with slots.hold(str(ana.id), cap=1):
                pass
            assert await presence.online([ana.id]) == set()
            assert announced[-1] == (ana.id, False)
        finally:
            await presence.close()
            await batch.close()
            await client.aclose()
