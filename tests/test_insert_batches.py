"""The group-commit batcher feeding the sequencer, over a model of the table: rows commit in
batches on concurrent lanes, batches are refused (their ids lost, rows retried one by one) or
fail with their outcome unknown (committed or not). Whatever happens, every row answered with an
id is in the table under that id, no row is stored twice, and every stored message is released
once, in id order, after the follower has settled what announcements did not bring."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat_server.catchup import DatabaseFollower
from chat_server.errors import Unavailable
from chat_server.models import Message
from chat_server.sequencer import Sequencer
from chat_server.store import batching
from chat_server.store.batching import InsertBatcher

MOMENT = datetime(2026, 1, 1, tzinfo=UTC)
Row = tuple[Any, ...]


class Refused(Exception):
    """The database refused the batch for a value: nothing stored."""


class Table:
    """Auto-increment ids handed out per INSERT; each INSERT's fate drawn from `fates`."""

    def __init__(self, fates: list[str]) -> None:
        self.fates = fates
        self.next_id = 1
        self.rows: dict[int, Message] = {}
        self.running = 0
        self.changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[None]:
        await asyncio.sleep(0)
        yield None

    async def insert(self, conn: None, rows: Sequence[Row]) -> list[int]:
        fate = self.fates.pop(0) if self.fates else "commit"
        ids = list(range(self.next_id, self.next_id + len(rows)))
        self.next_id += len(rows)  # handed out whatever happens next
        self.running += 1
        try:
            await asyncio.sleep(0.001 * (ids[0] % 3))  # lanes finish out of order
            if fate == "refuse" and len(rows) > 1:
                raise Refused
            if fate in ("commit", "lost_answer", "refuse"):
                for new_id, row in zip(ids, rows, strict=True):
                    self.rows[new_id] = Message(new_id, 1, 1, "ana", row[0], MOMENT)
            if fate in ("lost_answer", "unknown_not_stored"):
                raise Unavailable("database unavailable")  # the answer never came
            return ids
        finally:
            async with self.changed:
                self.running -= 1
                self.changed.notify_all()

    async def messages_after(self, after_id: int, limit: int) -> list[Message]:
        return sorted((m for m in self.rows.values() if m.id > after_id), key=lambda m: m.id)[:limit]

    async def writes_settled(self, after_id: int, below_id: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: not self.running)


FATES = st.sampled_from(["commit", "commit", "commit", "refuse", "lost_answer", "unknown_not_stored"])


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(fates=st.lists(FATES, max_size=20), posts=st.integers(1, 60), burst=st.integers(1, 20))
def test_batched_inserts_are_stored_once_and_released_once_in_order(
    fates: list[str], posts: int, burst: int
) -> None:
    asyncio.run(_scenario(fates, posts, burst))


async def _scenario(fates: list[str], posts: int, burst: int) -> None:
    table = Table(fates)
    released: list[int] = []
    sequencer = Sequencer(lambda m: released.append(m.id))
    follower = DatabaseFollower(sequencer, table)
    batcher = InsertBatcher(table.connection, table.insert, (Refused,))

    async def post(n: int) -> int | None:
        await asyncio.sleep(0.0005 * (n // burst))  # bursts that overlap the inserts in flight
        try:
            new_id = await batcher.insert((f"m{n}",))
        except Unavailable:
            return None
        sequencer.offer(table.rows[new_id])  # what the broker does once the row is stored
        return new_id

    async def follow() -> None:  # the follower reads the table while inserts run
        while True:
            await follower.catch_up()
            await asyncio.sleep(0.0005)

    following = asyncio.create_task(follow())
    answers = await asyncio.gather(*(post(n) for n in range(posts)))
    following.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await following
    while sequencer.released_id < max(table.rows, default=0):
        await follower.catch_up()

    accepted = [a for a in answers if a is not None]
    assert len(accepted) == len(set(accepted))
    assert all(table.rows[a].contenido == f"m{n}" for n, a in enumerate(answers) if a is not None)
    texts = [m.contenido for m in table.rows.values()]
    assert len(texts) == len(set(texts)), "a row stored twice"
    assert released == sorted(table.rows)
    assert sequencer.late == 0


async def test_a_row_no_lane_takes_in_time_fails_and_is_never_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    """While no connection can be had, a row waits WAIT_FOR_LANE, then fails (503): certainly
    not stored, not even once a connection comes back. A row a lane took is not withdrawn,
    however long its INSERT takes."""
    monkeypatch.setattr(batching, "WAIT_FOR_LANE", 0.05)
    database_back = asyncio.Event()
    statement_done = asyncio.Event()
    inserted: list[Row] = []

    @contextlib.asynccontextmanager
    async def connection() -> AsyncIterator[None]:
        await database_back.wait()
        yield None

    async def insert(conn: None, rows: Sequence[Row]) -> list[int]:
        inserted.extend(rows)
        await statement_done.wait()
        return list(range(len(inserted) - len(rows) + 1, len(inserted) + 1))

    batcher = InsertBatcher(connection, insert, (Refused,))
    with pytest.raises(Unavailable, match="database busy"):
        await batcher.insert(("withdrawn",))
    database_back.set()
    slow = asyncio.create_task(batcher.insert(("taken",)))
    while not inserted:  # noqa: ASYNC110 - the lane takes the row on its next turns
        await asyncio.sleep(0)
    await asyncio.sleep(2 * batching.WAIT_FOR_LANE)  # past the wait: taken rows stay
    statement_done.set()
    assert await slow == 1
    assert inserted == [("taken",)]


async def test_a_row_posted_as_every_lane_ends_gets_a_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every lane finishes in one loop turn, and a row comes in that same turn, after the lanes
    stopped looking for rows but before their tasks' done-callbacks ran: it must start a lane of
    its own, not wait WAIT_FOR_LANE for none and fail (a 503 for a healthy database)."""
    monkeypatch.setattr(batching, "WAIT_FOR_LANE", 0.5)
    gate = asyncio.Event()
    entered: asyncio.Queue[int] = asyncio.Queue()
    next_id = iter(range(1, 100))

    @contextlib.asynccontextmanager
    async def connection() -> AsyncIterator[None]:
        yield None

    async def insert(conn: None, rows: Sequence[Row]) -> list[int]:
        ids = [next(next_id) for _ in rows]
        entered.put_nowait(len(rows))
        await gate.wait()
        return ids

    batcher = InsertBatcher(connection, insert, (Refused,))
    first = []
    for n in range(batching.LANES):  # one row a lane, each held in its INSERT
        first.append(asyncio.create_task(batcher.insert((n,))))
        assert await entered.get() == 1

    waiting = asyncio.Event()

    async def late() -> int:
        waiting.set()
        await gate.wait()  # woken after the lanes, which waited on the gate first
        return await batcher.insert(("late",))

    posting = asyncio.create_task(late())
    await waiting.wait()  # by now `late` waits on the gate too
    gate.set()
    assert await asyncio.gather(*first) == [1, 2, 3, 4]
    assert await posting == 5
