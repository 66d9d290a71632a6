"""Who is online: a user is, while at least one stream of theirs is open on any process.

In-process, a count per user. With Redis, each process keeps its own counts and records
"user U is on process P until T" in a sorted set per user, refreshed well before T; a process
that dies stops refreshing, and whichever process sweeps the expired entry first announces the
user offline. Changes reach the per-user streams of the user's DM partners as `event: presence`,
told in the background (a stream's setup does not wait for it), one user's in the order made.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiohttp import web

from .keeper import Keeper
from .models import User
from .redis_batch import REFRESH_SPREAD, SLICE, Pipeline, RedisBatch
from .redis_policy import FAILURES, bounded

log = logging.getLogger(__name__)

# (user id, online) -> tell the user's DM partners, wherever their streams are.
Announce = Callable[[int, bool], Awaitable[None]]


class Presence(abc.ABC):
    def __init__(self, announce: Announce) -> None:
        self.announce = announce
        self._local: dict[int, int] = {}  # user id -> streams open on this process
        self._leaving: set[asyncio.Task[None]] = set()  # last-stream work outliving its stream
        # User id -> their latest announcement. A user's announcements run one after another,
        # in the order made, so partners end with the last state even when a stream opens and
        # closes before "online" was told.
        self._told: dict[int, asyncio.Task[None]] = {}

    def online_while(self, user: User | None) -> contextlib.AbstractAsyncContextManager[None]:
        """Count the user online for the body of the block (a stream's life)."""
        return _ANONYMOUS if user is None else _Online(self, user.id)

    async def _enter(self, user_id: int) -> None:
        count = self._local.get(user_id, 0)
        self._local[user_id] = count + 1
        if count == 0:
            try:
                await self._first_stream(user_id)
            except BaseException:  # e.g. the client hung up meanwhile: it was counted already
                await self._exit(user_id)
                raise

    async def _exit(self, user_id: int) -> None:
        count = self._local.pop(user_id) - 1
        if count:
            self._local[user_id] = count
            return
        # Shielded: the stream's task is usually being cancelled right now. `close` waits
        # for it, so it never outlives the store it reads.
        leaving = asyncio.create_task(self._last_stream(user_id))
        self._leaving.add(leaving)
        leaving.add_done_callback(self._leaving.discard)
        await asyncio.shield(leaving)

    def _tell(self, user_id: int, online: bool) -> asyncio.Task[None]:
        """Announce in the background, after the user's previous announcement. A connecting
        stream does not wait for it: telling the partners reads the user's DMs and publishes,
        and the stream needs neither to start."""
        task = asyncio.create_task(self._tell_after(self._told.get(user_id), user_id, online))
        self._told[user_id] = task
        task.add_done_callback(functools.partial(self._told_done, user_id))
        return task

    async def _tell_after(self, previous: asyncio.Task[None] | None, user_id: int, online: bool) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        await self.announce(user_id, online)

    def _told_done(self, user_id: int, task: asyncio.Task[None]) -> None:
        if self._told.get(user_id) is task:
            del self._told[user_id]

    @abc.abstractmethod
    async def online(self, user_ids: Iterable[int]) -> set[int]: ...

    @abc.abstractmethod
    async def _first_stream(self, user_id: int) -> None: ...

    @abc.abstractmethod
    async def _last_stream(self, user_id: int) -> None: ...

    async def start(self, keeper: Keeper) -> None:  # noqa: B027 - optional hook
        pass

    async def close(self) -> None:
        # Announcements read the store: none outlives it.
        pending = [*self._leaving, *self._told.values()]
        if pending:
            await asyncio.wait(pending)


class LocalPresence(Presence):
    async def online(self, user_ids: Iterable[int]) -> set[int]:
        return {u for u in user_ids if u in self._local}

    async def _first_stream(self, user_id: int) -> None:
        self._tell(user_id, True)

    async def _last_stream(self, user_id: int) -> None:
        await self._tell(user_id, False)


class RedisPresence(Presence):
    """Joins, leaves and refreshes go through the process's `RedisBatch`: one round trip per
    first or last stream (and fewer in a burst), each check-and-write atomic."""

    def __init__(
        self, announce: Announce, batch: RedisBatch, namespace: str, process_id: str, ttl: float
    ) -> None:
        super().__init__(announce)
        self.batch = batch
        self.redis = batch.client
        self.namespace = namespace
        self.process_id = process_id
        self.ttl = ttl
        self._keeper: Keeper | None = None

    def _key(self, user_id: int) -> str:
        return f"{self.namespace}:presence:{user_id}"

    @property
    def _expiries(self) -> str:
        """Every (user, process) entry with its expiry, for sweeping."""
        return f"{self.namespace}:presence"

    async def start(self, keeper: Keeper) -> None:
        self._keeper = keeper
        keeper.spawn("presence-refresh", self._refresh_forever)

    async def close(self) -> None:
        await super().close()
        if self._keeper is not None:
            await self._keeper.stop("presence-refresh")
        users = list(self._local)
        if users:
            with contextlib.suppress(*FAILURES):  # else the entries expire by themselves
                await self.batch.run(lambda pipe: self._leave(pipe, *users))

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        ids = list(user_ids)
        if not ids:
            return set()
        now = time.time()
        try:
            async with bounded(), self.redis.pipeline(transaction=False) as pipe:
                for user_id in ids:
                    pipe.zcount(self._key(user_id), now, "+inf")
                counts = await pipe.execute()
        except FAILURES:
            return {u for u in ids if u in self._local}  # Redis away: what this process knows
        return {u for u, n in zip(ids, counts, strict=True) if n}

    # Redis away or silent: presence fails open. The stream goes on, the user counts as online
    # in this process and is announced (the refresher records them once Redis answers).
    # Announced only when no other process has the user online: their partners were told then.

    async def _first_stream(self, user_id: int) -> None:
        def join(pipe: Pipeline) -> None:
            pipe.zrangebyscore(self._key(user_id), time.time(), "+inf")  # before our own entry
            self._join(pipe, user_id)

        try:
            others = self._others((await self.batch.run(join))[0])
        except FAILURES as exc:
            log.warning("presence: redis unreachable (%r)", exc)
            others = 0
        if not others:
            self._tell(user_id, True)

    async def _last_stream(self, user_id: int) -> None:
        def leave(pipe: Pipeline) -> None:
            self._leave(pipe, user_id)
            pipe.zrangebyscore(self._key(user_id), time.time(), "+inf")

        try:
            others = self._others((await self.batch.run(leave))[-1])
        except FAILURES as exc:
            log.warning("presence: redis unreachable (%r)", exc)
            others = 0
        if not others:
            await self._tell(user_id, False)

    def _others(self, members: list[bytes]) -> int:
        return sum(_text(m) != self.process_id for m in members)

    def _join(self, pipe: Pipeline, *user_ids: int) -> None:
        expires = time.time() + self.ttl
        for user_id in user_ids:
            pipe.zadd(self._key(user_id), {self.process_id: expires})
            pipe.zadd(self._expiries, {f"{user_id}:{self.process_id}": expires})

    def _leave(self, pipe: Pipeline, *user_ids: int) -> None:
        for user_id in user_ids:
            pipe.zrem(self._key(user_id), self.process_id)
            pipe.zrem(self._expiries, f"{user_id}:{self.process_id}")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            with contextlib.suppress(*FAILURES):
                await self.refresh(spread=self.ttl * REFRESH_SPREAD)
                await self.sweep()

    async def refresh(self, spread: float = 0.0) -> None:
        """Push back the expiry of this process's users, a slice at a time, the slices paced
        over `spread` seconds. Who of a slice is online is read when its operation is sent,
        after any leave queued before it: a user who just left is not written back."""
        await self.batch.run_sliced(list(self._local), self._rejoin, spread)

    def _rejoin(self, user_ids: Sequence[int], pipe: Pipeline) -> None:
        self._join(pipe, *(u for u in user_ids if u in self._local))

    async def sweep(self) -> None:
        """Entries of processes that stopped refreshing: their users may have gone offline. Read
        a slice at a time (a dead process may leave 20,000), each removed before the next read."""
        while True:
            async with bounded():
                found = await self.redis.zrangebyscore(
                    self._expiries, "-inf", time.time(), start=0, num=SLICE
                )
            await self._sweep_entries([_text(m) for m in found])
            if len(found) < SLICE:
                return

    async def _sweep_entries(self, expired: list[str]) -> None:
        for entry in expired:
            user_id, _, process_id = entry.partition(":")
            async with bounded():
                if not await self.redis.zrem(self._expiries, entry):
                    continue  # another process swept it first
                await self.redis.zrem(self._key(int(user_id)), process_id)
                online = await self.redis.zcount(self._key(int(user_id)), time.time(), "+inf")
            if not online:
                await self._tell(int(user_id), False)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Online:
    """One stream's share of its user's presence (a plain class: thousands stay open)."""

    __slots__ = ("presence", "user_id")

    def __init__(self, presence: Presence, user_id: int) -> None:
        self.presence = presence
        self.user_id = user_id

    async def __aenter__(self) -> None:
        await self.presence._enter(self.user_id)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.presence._exit(self.user_id)


_ANONYMOUS: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()

presence_key = web.AppKey("presence", Presence)
