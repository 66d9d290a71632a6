"""Presence and limits work of concurrent requests sent to Redis together: one round trip each.

Without this, every stream connect made its own Redis calls (presence: a read, then a write;
the stream cap: a transaction), and a burst of connects or disconnects borrowed one pooled
connection per call in flight, so the pool opened a new connection (and said HELLO) for each.
Here callers queue the commands of one operation; a single sender takes what is queued, sends
it as one MULTI/EXEC and hands each caller its replies. While a batch is in flight the next
one fills, so a burst of 500 connects costs a few round trips and one connection.

Invariant: batches go one at a time, in the order their operations were queued, and each
operation's commands run together (MULTI/EXEC) when their batch runs. (Only a batch all of
whose callers gave up during a Redis stall is abandoned; if it still lands later, what it wrote
is made good by the lease's next entry, leases.py.) So a read-then-write
(presence: "anyone else online? I am") is atomic, and an operation queued after another (a
stream's slot dropped after it was added, a rewrite after a leave) is applied after it.
The commands are written into the pipeline when the batch is sent, not when queued: a
rewrite queued before a leave writes what is open when it actually runs.

Work over every online user or open stream (a lost lease's rewrite, a sweep) goes `SLICE` of
them per operation, each queued once the one before is done (`run_sliced`), the slices paced
over a stretch of time: one MULTI/EXEC of 40,000 commands, built and parsed by redis-py in one
loop turn, stalled every post and delivery of the process for 100+ ms, and 500-user slices sent
back to back still held the loop 8-41 ms each; sliced and paced, the connects' joins and leaves
and the posts go out between slices.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as redis
from aiohttp import web

from .redis_policy import FAILURES, bounded

Pipeline = redis.client.Pipeline
# Writes one operation's commands into the batch's pipeline.
Commands = Callable[[Pipeline], object]
Batch = list[tuple[Commands, "asyncio.Future[list[Any]]"]]
# Operations per batch at most: this bounds how many small ones wait behind each other in one
# MULTI/EXEC.
MAX_BATCH = 1000
# Users or streams per operation of `run_sliced`: 200 commands, a loop turn of a few ms.
SLICE = 100

T = TypeVar("T")


class RedisBatch:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._queue: Batch = []
        self._sender: asyncio.Task[None] | None = None

    async def run(self, commands: Commands) -> list[Any]:
        """Queue one operation; its replies, in order. Raises one of FAILURES when Redis fails,
        refuses one of its commands or does not answer within the bound."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((commands, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_all(), name="redis-batch")
        # Bounded here too: a caller queued behind a stalled batch does not wait for two.
        async with bounded():
            return await future

    async def run_sliced(
        self, items: Sequence[T], commands: Callable[[Sequence[T], Pipeline], object], spread: float = 0.0
    ) -> None:
        """`commands(slice, pipe)` for each `SLICE` of `items`, one operation after another, the
        operations started evenly over `spread` seconds (a slice that answers late is not
        caught up on: the pass takes longer instead)."""
        starts = range(0, len(items), SLICE)
        pause = spread / len(starts) if starts else 0.0
        for start in starts:
            if start and pause:
                await asyncio.sleep(pause)
            await self.run(functools.partial(commands, items[start : start + SLICE]))

    async def close(self) -> None:
        """Wait for what is queued (a leave at shutdown) to be sent."""
        if self._sender is not None:
            await asyncio.wait([self._sender])

    async def _send_all(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            live = [(commands, future) for commands, future in batch if not future.done()]
            if not live:
                continue  # every caller gave up: nothing they asked for is sent
            sending = asyncio.create_task(self._send(live))

            def abandon(_: object, live: Batch = live, sending: asyncio.Task[None] = sending) -> None:
                # Every caller hung up or timed out: what is queued behind does not wait for
                # a Redis that is not answering (it goes out on a fresh connection).
                if all(future.done() for _, future in live):
                    sending.cancel()

            for _, future in live:
                future.add_done_callback(abandon)
            await asyncio.wait([sending])

    async def _send(self, live: Batch) -> None:
        spans: list[tuple[int, int]] = []
        try:
            async with bounded(), self.client.pipeline(transaction=True) as pipe:
                for commands, _ in live:
                    start = len(pipe)
                    commands(pipe)
                    spans.append((start, len(pipe)))
                replies = await pipe.execute(raise_on_error=False)
        except FAILURES as exc:
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        for (start, end), (_, future) in zip(spans, live, strict=True):
            if future.done():
                continue
            mine = replies[start:end]
            error = next((r for r in mine if isinstance(r, Exception)), None)
            if error is None:
                future.set_result(mine)
            else:
                future.set_exception(error)


redis_batch_key = web.AppKey("redis_batch", RedisBatch)
