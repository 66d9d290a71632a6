"""Group commit: concurrent message inserts share one multi-row INSERT.

Under load, posts arrive while an INSERT is on its way to the database; they wait for it and
then go together in the next one (one round trip and one commit for many messages). An idle
server flushes at once, so a lone post waits for nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

# Rows per INSERT: large enough to absorb a burst, small enough for one packet.
MAX_BATCH = 500

Row = tuple[Any, ...]


class InsertBatcher:
    def __init__(self, flush: Callable[[Sequence[Row]], Awaitable[list[int]]]) -> None:
        self._flush = flush
        self._pending: list[tuple[Row, asyncio.Future[int]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def insert(self, row: Row) -> int:
        """The new id of `row`, once the INSERT that carried it has committed."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    ids = await self._flush([row for row, _ in batch])
                except Exception as exc:  # every waiter gets the failure (e.g. a 503)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), new_id in zip(batch, ids, strict=True):
                    if not future.done():
                        future.set_result(new_id)
        finally:
            self._draining = None
