"""Group commit: concurrent message inserts share one multi-row INSERT.

Under load, posts arrive while INSERTs are on their way to the database; they wait and then go
together in the next one (one round trip and one commit for many messages). An idle server
flushes at once, so a lone post waits for nothing.

Up to LANES inserts are in flight at once, each on a connection of its own, so a connection
that stops answering holds back only its own batch (which fails by the store's statement
timeout: 503, outcome unknown); later rows go on the other lanes. A lane takes rows only once
it holds a connection, and a row that no lane took within WAIT_FOR_LANE is withdrawn (503, and
certainly not stored). A batch the database refused for its values (or rolled back whole, a
deadlock victim) was not stored at all: its rows are tried again one by one, so that only the row
at fault fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

from ..errors import Unavailable

# Rows per INSERT: large enough to absorb a burst, small enough for one packet.
MAX_BATCH = 500
# INSERTs in flight at once: enough that one silent connection leaves room for the others.
LANES = 4
# A row waits this long for a lane with a connection (as long as a connection is waited for).
WAIT_FOR_LANE = 2.0

Row = tuple[Any, ...]
C = TypeVar("C")


class _Waiting:
    __slots__ = ("future", "row")

    def __init__(self, row: Row, future: asyncio.Future[int]) -> None:
        self.row = row
        self.future = future


class InsertBatcher(Generic[C]):
    def __init__(
        self,
        connection: Callable[[], AbstractAsyncContextManager[C]],
        insert: Callable[[C, Sequence[Row]], Awaitable[list[int]]],
        refused: tuple[type[Exception], ...],
    ) -> None:
        """`insert(conn, rows)` inserts the rows on `conn` and returns their ids in order;
        `refused` is what the store raises for a batch of which nothing was stored."""
        self._connection = connection
        self._insert = insert
        self._refused = refused
        self._pending: list[_Waiting] = []
        self._lanes: set[asyncio.Task[None]] = set()

    async def insert(self, row: Row) -> int:
        """The new id of `row`, once the INSERT that carried it has committed."""
        # One timer and the row's own future: asyncio.wait() costs a future, a set, callbacks
        # and loop look-ups (on Python 3.11 each a getpid() system call) more per row.
        loop = asyncio.get_running_loop()
        waiting = _Waiting(row, loop.create_future())
        self._pending.append(waiting)
        if len(self._lanes) < LANES:
            lane = loop.create_task(self._lane())
            self._lanes.add(lane)
            lane.add_done_callback(self._lanes.discard)
        withdraw = loop.call_later(WAIT_FOR_LANE, self._withdraw, waiting)
        try:
            return await waiting.future
        finally:
            withdraw.cancel()

    def _withdraw(self, waiting: _Waiting) -> None:
        """No lane took the row in time: it will not be stored (a lane that took it settles it)."""
        if waiting in self._pending:
            self._pending.remove(waiting)
            waiting.future.set_exception(Unavailable("database busy"))

    async def _lane(self) -> None:
        """Insert what is pending until nothing is. A lane counts itself out in the same step as
        its last look at the pending rows: a row that comes after it starts a lane of its own
        (counted out by its done-callback, a row could come while every lane had ended and yet
        still counted, and wait for none)."""
        batch: list[_Waiting] = []
        try:
            while self._pending:
                batch = []
                try:
                    async with self._connection() as conn:
                        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                        if not batch:
                            continue  # another lane took them: look again once this one is back
                        ids = await self._insert(conn, [w.row for w in batch])
                except self._refused:
                    await self._one_by_one(batch)
                    continue
                except Exception as exc:
                    if batch:
                        _fail(batch, exc)
                        continue
                    # No connection. The rows waiting now fail with it, unless another lane may
                    # still take them (else they wait for one, WAIT_FOR_LANE at most).
                    if self._lanes <= {asyncio.current_task()}:
                        batch, self._pending = self._pending, []
                        _fail(batch, exc)
                    return
                for waiting, new_id in zip(batch, ids, strict=True):
                    _settle(waiting, new_id)
        finally:  # whatever ends a lane (the loop closing, a bug), no row it took waits forever
            self._lanes.discard(asyncio.current_task())
            _fail(batch, Unavailable("database unavailable"))

    async def _one_by_one(self, batch: list[_Waiting]) -> None:
        for waiting in batch:
            try:
                async with self._connection() as conn:
                    (new_id,) = await self._insert(conn, [waiting.row])
            except Exception as exc:
                _fail([waiting], exc)
            else:
                _settle(waiting, new_id)


def _settle(waiting: _Waiting, new_id: int) -> None:
    if not waiting.future.done():
        waiting.future.set_result(new_id)


def _fail(batch: list[_Waiting], exc: Exception) -> None:
    for waiting in batch:
        if not waiting.future.done():
            waiting.future.set_exception(exc)
