"""Shared look-ups: concurrent reads of single keys go to the database as one `IN (...)` query.

A burst of stream connects each asks for its own chat (or user) at once; one query a key costs a
round trip and a statement's worth of CPU on both sides each time. Here, the keys asked during
the same loop turn wait together and go in one query at the end of it; keys asked while LANES
queries are in flight wait for the next one. A key is only ever answered by a query sent after
it was asked (never by one already in flight), so a caller sees at least what it would have
seen alone, e.g. a row committed before it asked.

Queries run in a task of their own: a caller that is cancelled stops waiting, and the others
still get their answer. A query that fails fails each of its callers with `Unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from itertools import islice
from typing import Generic, TypeVar

from ..errors import Unavailable

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

# Keys per query: a burst's worth, and well within SQLite's parameter limit.
MAX_KEYS = 500
# Queries in flight at once: a connection that stops answering holds back only its own keys.
LANES = 2


class Loader(Generic[K, V]):
    def __init__(self, fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]]) -> None:
        """`fetch(keys)` reads the keys in one query: the value of each key found."""
        self._fetch = fetch
        self._queued: dict[K, asyncio.Future[V | None]] = {}  # asked, not yet sent
        self._running = 0  # lanes that will still look at `_queued`
        self._lanes: set[asyncio.Task[None]] = set()  # strong references

    async def load(self, keys: Collection[K]) -> dict[K, V]:
        """The value of each key found (a missing key is left out)."""
        futures = {key: self._future(key) for key in keys}
        if not futures:
            return {}
        if self._running < LANES:
            self._running += 1
            lane = asyncio.create_task(self._lane())  # starts after this loop turn
            self._lanes.add(lane)
            lane.add_done_callback(self._lanes.discard)
        await asyncio.wait(futures.values())  # cancelling this caller cancels no future
        for future in futures.values():
            if (failure := future.exception()) is not None:
                raise Unavailable("database unavailable") from failure
        return {key: value for key, future in futures.items() if (value := future.result()) is not None}

    def _future(self, key: K) -> asyncio.Future[V | None]:
        future = self._queued.get(key)
        if future is None:
            future = self._queued[key] = asyncio.get_running_loop().create_future()
        return future

    async def _lane(self) -> None:
        batch: dict[K, asyncio.Future[V | None]] = {}
        try:
            while self._queued:
                batch = {key: self._queued.pop(key) for key in list(islice(self._queued, MAX_KEYS))}
                try:
                    found = await self._fetch(list(batch))
                except Exception as exc:
                    _fail(batch, exc)
                    continue
                for key, future in batch.items():
                    if not future.done():
                        future.set_result(found.get(key))
        finally:
            # Counted out in the same step as the last look at `_queued`: a key queued after it
            # starts a lane of its own.
            self._running -= 1
            # Cancelled (the loop closing): no caller waits forever.
            _fail(batch, Unavailable("database unavailable"))
            if not self._running:
                _fail(self._queued, Unavailable("database unavailable"))
                self._queued.clear()


def _fail(batch: Mapping[K, asyncio.Future[V | None]], exc: Exception) -> None:
    if not isinstance(exc, Unavailable):
        log.warning("look-up failed: %r", exc)
    for future in batch.values():
        if not future.done():
            future.set_exception(exc)
            future.exception()  # retrieved: a key whose callers all left is no error to log
