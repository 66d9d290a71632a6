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

from .chat_client import AiohttpClient, ChatClient, Follower
from .databases import HOST, PORT, throwaway_database
from .services import PrivateRedis
from .test_scale_out import SHARED_REDIS
from .waiting import eventually

Make = Callable[[str], Awaitable[ChatClient]]
GATE = "gated"  # messages starting with this wait in the database until the test opens the gate


class Gate:
    """A trigger that holds every INSERT of a message starting with GATE, after its id is
    handed out and before it commits, while the test holds a row lock. (A row lock: the server
    goes on waiting when the client gives up, as it does for a statement stalled in the
    database, and commits when the lock is free. A user lock's wait would end with the client.)"""

    def __init__(self, database: str) -> None:
        self.database = database
        self.conn: pymysql.connections.Connection | None = None
        self.holder: pymysql.connections.Connection | None = None

    def install(self) -> None:
        """The trigger (the app must have made the schema). DDL waits for every transaction on
        the table, and holds back every statement meanwhile: best done before traffic."""
        self.conn = self._connect(autocommit=True)
        self.holder = self._connect(autocommit=False)
        self._sql("CREATE TABLE IF NOT EXISTS test_gate (id INT PRIMARY KEY, n INT NOT NULL)")
        self._sql("INSERT IGNORE INTO test_gate VALUES (1, 0)")
        self._sql(
            "CREATE TRIGGER IF NOT EXISTS test_gate AFTER INSERT ON mensajes_v2 FOR EACH ROW "
            f"BEGIN IF NEW.contenido LIKE '{GATE}%' THEN "
            "UPDATE test_gate SET n = n + 1 WHERE id = 1; END IF; END"
        )

    def close(self) -> None:
        """Hold back gated inserts from now on."""
        if self.conn is None:
            self.install()
        assert self.holder is not None
        with self.holder.cursor() as cur:
            cur.execute("SELECT n FROM test_gate WHERE id = 1 FOR UPDATE")

    def open(self) -> None:
        if self.holder is not None:
            self.holder.commit()

    def holding(self) -> bool:
        """Whether an insert waits at the gate (its id handed out, not committed)."""
        waiting = (  # PROCESSLIST, live (INNODB_TRX is a cache that frequent reads keep stale)
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            "WHERE DB = DATABASE() AND INFO LIKE 'UPDATE test_gate%'"
        )
        return bool(self._sql(waiting)[0][0])

    def committed(self) -> int | None:
        """The id of the gated message, once committed."""
        rows = self._sql(f"SELECT id FROM mensajes_v2 WHERE contenido LIKE '{GATE}%'")
        return int(rows[0][0]) if rows else None

    def shut(self) -> None:
        for conn in (self.holder, self.conn):
            if conn is not None:
                conn.close()

    def _connect(self, *, autocommit: bool) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=HOST, port=PORT, user="root", database=self.database, autocommit=autocommit
        )

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
    gate.shut()


async def follow(session: aiohttp.ClientSession, client: ChatClient, **params: object) -> Follower:
    follower = Follower(session, str(client.http.make_url("/api/stream")), dict(params))
    await follower.start()
    return follower


async def held_post(a: ChatClient, gate: Gate, chat_id: int) -> asyncio.Task[Any]:
    """A post on `a` whose insert waits at the closed gate, its id handed out. (To General: its
    INSERT commits by itself, also after the client gave up; a DM's runs in a transaction
    that a client gone rolls back.)"""
    body = {"chat_id": chat_id, "contenido": f"{GATE} message", "username": "ana"}
    task = asyncio.create_task(a.call("POST", "/api/messages", json=body))
    await eventually(gate.holding, "the insert waits at the gate")
    return task


async def let_through(gate: Gate, post: asyncio.Task[Any]) -> int:
    """Open the gate; the held message's id once it committed. Its post answered 201, or 503
    if the statement outlived the store's bound (the row commits all the same)."""
    gate.open()
    await eventually(lambda: gate.committed() is not None, "the held insert committed")
    answer = await post
    held = gate.committed()
    assert held is not None
    assert "error" in answer or answer["message"]["id"] == held
    return held


async def two_processes(process: Make, redis_url: str, gate: Gate) -> tuple[ChatClient, ChatClient]:
    """Processes a and b, ana known, and the gate closed."""
    a, b = await process(redis_url), await process(redis_url)
    await a.login("ana")
    gate.close()
    return a, b


async def test_an_insert_slower_than_any_timeout_is_still_delivered_first(
    process: Make, session: aiohttp.ClientSession, gate: Gate
) -> None:
    """Was: a start not done in 5 s was given up, the larger id released, and the slow message
    sent later, below the watermark (after a larger id, or not at all past a stream's floor)."""
    a, b = await two_processes(process, SHARED_REDIS, gate)
    ana = await follow(session, b, username="ana", last_event_id=0)
    slow = await held_post(a, gate, a.store.general_id)
    fast = await b.post(b.store.general_id, "fast", "beto")
    await asyncio.sleep(5.5)  # the insert stays open longer than the old start timeout
    general = await follow(session, b, chat_id=b.store.general_id, last_event_id=0)
    held = await let_through(gate, slow)
    assert await ana.wait_for(2) == [held, fast["id"]]
    assert await general.wait_for(2) == [held, fast["id"]]


async def test_a_resync_does_not_move_past_an_insert_in_flight(
    process: Make, session: aiohttp.ClientSession, gate: Gate, database_url: str
) -> None:
    """Was: a resync forgot the inserts in flight and jumped the watermark to the newest id,
    so the message committed after it was sent below every stream's floor."""
    a, b = await two_processes(process, SHARED_REDIS, gate)
    ana = await follow(session, b, username="ana", last_event_id=0)
    slow = await held_post(a, gate, a.store.general_id)
    fast = await b.post(b.store.general_id, "fast", "beto")
    await resync(b, SHARED_REDIS, database_url)
    await eventually(lambda: ana.connects >= 2, "the stream resumed after the resync")
    held = await let_through(gate, slow)
    assert await ana.wait_for(2) == [held, fast["id"]]


async def test_the_follower_waits_for_a_commit_slower_than_a_second(
    process: Make, session: aiohttp.ClientSession, gate: Gate, tmp_path: Path
) -> None:
    """Was: with Redis down, the database follower took an id missing for 1 s as rolled back."""
    with PrivateRedis(tmp_path) as private:
        a, b = await two_processes(process, private.url, gate)
        ana = await follow(session, b, username="ana", last_event_id=0)
        private.stop()
        await eventually(lambda: not a.broker.healthy and not b.broker.healthy, "both read the table")
        slow = await held_post(a, gate, a.store.general_id)
        fast = await b.post(b.store.general_id, "fast", "beto")
        await asyncio.sleep(1.5)  # the insert stays open longer than the old gap timeout
        held = await let_through(gate, slow)
        assert await ana.wait_for(2) == [held, fast["id"]]
        await ana.stop()


async def test_an_insert_begun_while_degraded_and_committed_after_the_resync_is_delivered(
    process: Make, session: aiohttp.ClientSession, gate: Gate, database_url: str, tmp_path: Path
) -> None:
    """Was: an insert begun while Redis was down was never announced, and the resync moved the
    watermark past its id, so committing after it delivered it to no stream."""
    with PrivateRedis(tmp_path) as private:
        a, b = await two_processes(process, private.url, gate)
        private.stop()
        await eventually(lambda: not a.broker.healthy and not b.broker.healthy, "both read the table")
        slow = await held_post(a, gate, a.store.general_id)
        fast = await b.post(b.store.general_id, "fast", "beto")
        private.start()
        await eventually(lambda: a.broker.healthy and b.broker.healthy, "both use Redis again")
        await resync(b, private.url, database_url)  # and so every resync before it is over
        ana = await follow(session, b, username="ana", last_event_id=0)
        held = await let_through(gate, slow)
        assert await ana.wait_for(2) == [held, fast["id"]]
        await ana.stop()


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
        held.add_done_callback(lambda task: task.exception())  # 503 past the store's bound
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
        await catching_up
        assert released == [gate.committed(), after]
        assert sequencer.proven_absent == 1
    finally:
        await store.close()


class RolledBack(Exception):
    pass
