"""The ordering bugs of issue 11, each reproduced on two processes sharing MariaDB and Redis.

An insert is held open in the database by a trigger that waits on a named lock the test holds:
its id is handed out, its row not committed. Meanwhile the other process commits a larger id.
Whatever happens to the announcements (a start given up after 5 s, a resync, Redis down), every
stream must get the held message, before the larger one, once it commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pymysql
import pytest
import redis.asyncio as redis

from chat_server.app import create_app
from chat_server.broker import channel_for
from chat_server.catchup import DatabaseFollower
from chat_server.sequencer import Sequencer
from chat_server.settings import Settings
from chat_server.store.mysql import MysqlStore

from .chat_client import WAIT, AiohttpClient, ChatClient, Follower
from .databases import HOST, PORT, throwaway_database
from .services import PrivateRedis
from .test_scale_out import SHARED_REDIS
from .waiting import eventually

Make = Callable[[str], Awaitable[ChatClient]]
GATE = "gated"  # messages starting with this wait in the database until the test opens the gate


class Gate:
    """A trigger that holds every INSERT of a message starting with GATE, after its id is
    handed out and before it commits, while the test holds the gate's lock."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.lock = f"gate_{database}"[:64]
        self.conn: pymysql.connections.Connection | None = None

    def close(self) -> None:
        """Hold back gated inserts from now on (the app must have made the schema)."""
        self.conn = pymysql.connect(
            host=HOST, port=PORT, user="root", database=self.database, autocommit=True
        )
        self._sql(
            "CREATE TRIGGER IF NOT EXISTS test_gate AFTER INSERT ON mensajes_v2 FOR EACH ROW "
            f"BEGIN IF NEW.contenido LIKE '{GATE}%' THEN "
            f"DO GET_LOCK('{self.lock}', 60); DO RELEASE_LOCK('{self.lock}'); END IF; END"
        )
        self._sql(f"SELECT GET_LOCK('{self.lock}', 5)")

    def open(self) -> None:
        if self.conn is not None:
            self._sql(f"SELECT RELEASE_LOCK('{self.lock}')")

    def holding(self) -> bool:
        """Whether an insert waits at the gate (its id handed out, not committed)."""
        waiting = (
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            "WHERE STATE = 'User lock' AND DB = DATABASE()"
        )
        return bool(self._sql(waiting)[0][0])

    def _sql(self, sql: str) -> tuple[tuple[Any, ...], ...]:
        assert self.conn is not None
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return tuple(cur.fetchall())


@pytest.fixture
def database_url() -> Iterator[str]:
    with throwaway_database() as url:
        yield url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


@pytest.fixture
def process(database_url: str, aiohttp_client: AiohttpClient) -> Make:
    async def make(redis_url: str) -> ChatClient:
        app = create_app(Settings(database_url=database_url, redis_url=redis_url, secret="s"))
        return ChatClient(await aiohttp_client(app))

    return make


@pytest.fixture
def gate(database_url: str) -> Iterator[Gate]:
    gate = Gate(database_url.rsplit("/", 1)[-1])
    yield gate
    gate.open()
    if gate.conn is not None:
        gate.conn.close()


async def follow(session: aiohttp.ClientSession, client: ChatClient, **params: object) -> Follower:
    follower = Follower(session, str(client.http.make_url("/api/stream")), dict(params))
    await follower.start()
    return follower


async def held_post(a: ChatClient, gate: Gate, chat_id: int) -> asyncio.Task[dict[str, Any]]:
    """A post on `a` whose insert waits at the closed gate, its id handed out."""
    task = asyncio.create_task(a.post(chat_id, f"{GATE} message", "ana"))
    await eventually(gate.holding, "the insert waits at the gate")
    return task


async def two_processes(process: Make, redis_url: str, gate: Gate) -> tuple[ChatClient, ChatClient, int]:
    """Processes a and b, ana's DM with admin, and the gate closed."""
    a, b = await process(redis_url), await process(redis_url)
    await a.login("ana")
    dm = await a.dm_id("ana", "admin")
    gate.close()
    return a, b, dm


async def test_an_insert_slower_than_any_timeout_is_still_delivered_first(
    process: Make, session: aiohttp.ClientSession, gate: Gate
) -> None:
    """Was: a start not done in 5 s was given up, the larger id released, and the slow message
    sent later, below the watermark (after a larger id, or not at all past a stream's floor)."""
    a, b, dm = await two_processes(process, SHARED_REDIS, gate)
    ana = await follow(session, b, username="ana", last_event_id=0)
    slow = await held_post(a, gate, dm)
    fast = await b.post(b.store.general_id, "fast", "beto")
    await asyncio.sleep(5.5)  # the insert stays open longer than the old start timeout
    dm_stream = await follow(session, b, chat_id=dm, username="admin", last_event_id=0)
    gate.open()
    held = await slow
    assert await ana.wait_for(2) == [held["id"], fast["id"]]
    assert await dm_stream.wait_for(1) == [held["id"]]


async def test_a_resync_does_not_move_past_an_insert_in_flight(
    process: Make, session: aiohttp.ClientSession, gate: Gate, database_url: str
) -> None:
    """Was: a resync forgot the inserts in flight and jumped the watermark to the newest id,
    so the message committed after it was sent below every stream's floor."""
    a, b, dm = await two_processes(process, SHARED_REDIS, gate)
    ana = await follow(session, b, username="ana", last_event_id=0)
    slow = await held_post(a, gate, dm)
    fast = await b.post(b.store.general_id, "fast", "beto")
    await resync(b, SHARED_REDIS, database_url)
    await eventually(lambda: ana.connects >= 2, "the stream resumed after the resync")
    gate.open()
    held = await slow
    assert await ana.wait_for(2) == [held["id"], fast["id"]]


async def test_the_follower_waits_for_a_commit_slower_than_a_second(
    process: Make, session: aiohttp.ClientSession, gate: Gate, tmp_path: Path
) -> None:
    """Was: with Redis down, the database follower took an id missing for 1 s as rolled back."""
    with PrivateRedis(tmp_path) as private:
        a, b, dm = await two_processes(process, private.url, gate)
        ana = await follow(session, b, username="ana", last_event_id=0)
        private.stop()
        await eventually(lambda: not a.broker.healthy and not b.broker.healthy, "both read the table")
        slow = await held_post(a, gate, dm)
        fast = await b.post(b.store.general_id, "fast", "beto")
        await asyncio.sleep(1.5)  # the insert stays open longer than the old gap timeout
        gate.open()
        held = await slow
        assert await ana.wait_for(2) == [held["id"], fast["id"]]
        await ana.stop()


async def test_an_insert_begun_while_degraded_and_committed_after_the_resync_is_delivered(
    process: Make, gate: Gate, database_url: str, tmp_path: Path
) -> None:
    """Was: an insert begun while Redis was down was never announced, and the resync moved the
    watermark past its id, so committing after it delivered it to no stream."""
    with PrivateRedis(tmp_path) as private:
        a, b, dm = await two_processes(process, private.url, gate)
        private.stop()
        await eventually(lambda: not a.broker.healthy and not b.broker.healthy, "both read the table")
        slow = await held_post(a, gate, dm)
        fast = await b.post(b.store.general_id, "fast", "beto")
        private.start()
        await eventually(lambda: a.broker.healthy and b.broker.healthy, "both use Redis again")
        await resync(b, private.url, database_url)  # and so every resync before it is over
        ana = await b.open_stream({"username": "ana", "last_event_id": 0})
        gate.open()
        held = await slow
        received = await asyncio.wait_for(ana.messages(2), WAIT)  # heartbeats alone never end it
        assert [m["id"] for m in received] == [held["id"], fast["id"]]


async def resync(client: ChatClient, redis_url: str, database_url: str) -> None:
    """Announce a resync, as a process coming back does, and wait until `client` applied it."""
    before = client.broker.resyncs
    channel = redis.from_url(redis_url)
    try:
        await channel.publish(channel_for(database_url), json.dumps({"type": "resync"}))
    finally:
        await channel.aclose()
    await eventually(lambda: client.broker.resyncs > before, "the resync was applied")


async def test_the_follower_proves_a_rolled_back_id_absent_and_waits_for_an_open_one(
    database_url: str, gate: Gate
) -> None:
    """On MariaDB itself: an id whose transaction is open holds the watermark, however long;
    an id whose transaction rolled back is proven absent, and what follows it goes out."""
    store = MysqlStore(database_url)
    await store.start()
    try:
        released: list[int] = []
        sequencer = Sequencer(lambda m: released.append(m.id), await store.latest_message_id())
        follower = DatabaseFollower(sequencer, store)
        general = store.general_id
        admin = await store.get_user(username="admin")
        assert admin is not None
        gate.close()
        held = asyncio.create_task(store.add_message(general, admin, f"{GATE} open"))
        await eventually(gate.holding, "the insert waits at the gate")
        row = (general, admin.id, "text", "2026-01-01 00:00:00")
        with contextlib.suppress(RolledBack):
            async with store.transaction() as db:
                await store.insert_messages(db, [row])
                raise RolledBack
        async with store.connection() as db:
            (after,) = await store.insert_messages(db, [row])
        catching_up = asyncio.create_task(follower.catch_up())
        await asyncio.sleep(1.5)  # longer than any timeout the old follower had
        assert released == []
        assert not catching_up.done()
        gate.open()
        first = await held
        await catching_up
        assert released == [first.id, after]
        assert sequencer.proven_absent == 1
    finally:
        await store.close()


class RolledBack(Exception):
    pass
