"""MariaDB going away under load: only 503s while it is down, recovery without a restart, and
every message that got 201 stored once and delivered to every subscriber."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from chat_server.app import create_app
from chat_server.settings import Settings

from .chat_client import AiohttpClient, ChatClient, Follower
from .services import PrivateMariaDB
from .waiting import eventually

# A request that takes longer than this counts as a hang.
REQUEST_DEADLINE = 10.0


@pytest.fixture
def mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    with PrivateMariaDB(tmp_path) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=REQUEST_DEADLINE)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        yield session


class Poster:
    """Posts to General without pause, recording every answer."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.statuses: Counter[int] = Counter()
        self.accepted: list[int] = []
        self.texts: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self, lanes: int = 2) -> None:
        self._task = asyncio.create_task(self._run(lanes))

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self, lanes: int) -> None:
        await asyncio.gather(*(self._lane(n) for n in range(lanes)))

    async def _lane(self, lane: int) -> None:
        for i in range(1_000_000):
            text = f"lane {lane} post {i}"
            body = {"chat_id": 1, "contenido": text, "username": f"poster{lane}"}
            async with self.session.post(f"{self.base}/api/messages", json=body) as resp:
                answer = await resp.json()
                self.statuses[resp.status] += 1
                if resp.status == 201:
                    self.accepted.append(answer["message"]["id"])
                    self.texts.append(text)
                else:
                    assert "error" in answer
            if resp.status == 503:
                await asyncio.sleep(0.02)  # a client's back-off; keeps the log readable


async def test_mariadb_stopped_and_restarted_under_posting_load(
    mariadb: PrivateMariaDB,
    session: aiohttp.ClientSession,
    aiohttp_client: AiohttpClient,
) -> None:
    settings = Settings(database_url=mariadb.url("chat_faults"), secret="s", heartbeat_seconds=0.5)
    client = ChatClient(await aiohttp_client(create_app(settings)))
    base = str(client.http.make_url("")).rstrip("/")
    followers = [Follower(session, f"{base}/api/stream", {"chat_id": 1}) for _ in range(3)]
    for follower in followers:
        await follower.start()
    poster = Poster(session, base)
    poster.start()
    try:
        await eventually(lambda: len(poster.accepted) >= 50, "posts are accepted")
        mariadb.stop()
        await eventually(lambda: poster.statuses[503] >= 10, "posts get 503 while MariaDB is down")
        async with session.get(f"{base}/healthz") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]
        accepted_before = len(poster.accepted)
        mariadb.start()
        await eventually(lambda: len(poster.accepted) >= accepted_before + 50, "posts are accepted again")
    finally:
        await poster.stop()

    assert set(poster.statuses) <= {201, 503}, poster.statuses
    history = await _all_of_general(client)
    stored_ids = [m["id"] for m in history]
    assert len(set(stored_ids)) == len(stored_ids)
    assert set(poster.accepted) <= set(stored_ids)
    texts = [m["contenido"] for m in history]
    assert len(texts) == len(set(texts)), "a message was stored twice"
    accepted = set(poster.accepted)
    for follower in followers:
        await eventually(lambda: all(accepted <= set(f.ids) for f in followers), "every 201 is delivered")
        assert follower.ids == sorted(set(follower.ids)), "delivered in order, once"
        assert follower.connects == 1, "the stream stayed open through the outage"
        await follower.stop()


async def _all_of_general(client: ChatClient) -> list[dict[str, object]]:
    messages: list[dict[str, object]] = []
    while True:
        page = await client.history(1, after_id=messages[-1]["id"] if messages else 0, limit=200)
        if not page:
            return messages
        messages.extend(page)
