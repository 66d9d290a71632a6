"""Who is online: a user is, while at least one stream of theirs is open on any process.

In-process, a count per user. With Redis, each process keeps its own counts and records "user U
is online on entry E" (E: the process's lease, leases.py); a process that dies stops renewing its
lease, its users stop counting when it ends, and whichever process claims the ended lease first
announces them offline. Changes reach the per-user streams of the user's DM partners as `event: presence`,
told in the background (a stream's setup does not wait for it), one user's in the order made.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiohttp import web

from .leases import Lease
from .models import User
from .redis_batch import SLICE, Pipeline
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
    """Who is online on which process, in Redis, under this process's lease (leases.py): a set
    per user of the entries with the user online, and a set per entry of its users (what a sweep
    undoes). A user is online while one of their entries holds a live lease. Joins and leaves go
    through the process's `RedisBatch`: one round trip per first or last stream (and fewer in a
    burst), each check-and-write atomic."""

    def __init__(self, announce: Announce, lease: Lease) -> None:
        super().__init__(announce)
        self.lease = lease
        self.batch = lease.batch
        self.namespace = lease.namespace
        lease.holders.append(self)

    def _key(self, user_id: int) -> str:
        return f"{self.namespace}:presence:{user_id}"

    def _users_of(self, entry: str) -> str:
        return f"{self.namespace}:presence:of:{entry}"

    async def close(self) -> None:
        await super().close()
        users = list(self._local)
        if users:
            with contextlib.suppress(*FAILURES):  # else they stop counting with the lease
                await self.batch.run(lambda pipe: self._leave(pipe, *users))

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        ids = list(user_ids)
        if not ids:
            return set()
        try:
            async with bounded(), self.batch.client.pipeline(transaction=False) as pipe:
                self._read_holders(ids, pipe)  # reads only: no need to queue behind the writes
                live, *entries = await pipe.execute()
        except FAILURES:
            return {u for u in ids if u in self._local}  # Redis away: what this process knows
        alive = Lease.live_entries(live)
        return {u for u, held in zip(ids, entries, strict=True) if alive & Lease.live_entries(held)}

    # Redis away or silent: presence fails open. The stream goes on, the user counts as online
    # in this process and is announced, and the lease is spoiled: its next renewal writes every
    # user again under a new entry (leases.py). Announced only when no other process has the
    # user online: their partners were told then.

    async def _first_stream(self, user_id: int) -> None:
        if not await self._others_after(lambda pipe: self._join(pipe, user_id), user_id):
            self._tell(user_id, True)

    async def _last_stream(self, user_id: int) -> None:
        if not await self._others_after(lambda pipe: self._leave(pipe, user_id), user_id):
            await self._tell(user_id, False)

    async def _others_after(self, write: Callable[[Pipeline], None], user_id: int) -> int:
        """`write` this process's change for the user and, in the same operation, read how many
        other processes hold them (this process's own entries never count); 0 when Redis did
        not answer."""

        def write_then_read(pipe: Pipeline) -> None:
            write(pipe)
            pipe.smembers(self._key(user_id))
            self.lease.live(pipe)

        try:
            *_, held, live = await self.batch.run(write_then_read)
        except FAILURES as exc:
            log.warning("presence: redis unreachable (%r)", exc)
            self.lease.spoil()
            return 0
        return self._others(held, live)

    def _others(self, held: Iterable[bytes], live: Iterable[bytes]) -> int:
        """Live entries of other processes among those that hold a user."""
        holding = Lease.live_entries(held) & Lease.live_entries(live)
        return sum(not self.lease.is_own(entry) for entry in holding)

    def _join(self, pipe: Pipeline, *user_ids: int) -> None:
        if user_ids:
            entry = self.lease.entry
            for user_id in user_ids:
                pipe.sadd(self._key(user_id), entry)
            pipe.sadd(self._users_of(entry), *user_ids)

    def _leave(self, pipe: Pipeline, *user_ids: int) -> None:
        if user_ids:
            entry = self.lease.entry
            for user_id in user_ids:
                pipe.srem(self._key(user_id), entry)
            pipe.srem(self._users_of(entry), *user_ids)

    async def rewrite(self, spread: float) -> None:
        """Every user online here, again under the lease's new entry, a slice at a time paced
        over `spread` seconds. Who of a slice is online is read when its operation is sent, after
        any leave queued before it: a user who just left is not written back. Then those no other
        process holds are announced online: the sweep of a lost entry told their partners they
        had gone (when it was not lost but spoiled, this tells them again what they know)."""
        users = list(self._local)
        await self.batch.run_sliced(users, self._rejoin, spread)
        for start in range(0, len(users), SLICE):
            here = [u for u in users[start : start + SLICE] if u in self._local]
            if here:
                replies = await self.batch.run(functools.partial(self._read_holders, here))
                for user_id, held in zip(here, replies[1:], strict=True):
                    if not self._others(held, replies[0]):
                        self._tell(user_id, True)

    def _rejoin(self, user_ids: Sequence[int], pipe: Pipeline) -> None:
        self._join(pipe, *(u for u in user_ids if u in self._local))

    def _read_holders(self, user_ids: list[int], pipe: Pipeline) -> None:
        """The live entries, then the entries holding each user."""
        self.lease.live(pipe)
        for user_id in user_ids:
            pipe.smembers(self._key(user_id))

    async def sweep(self, entry: str) -> None:
        """The users of an entry whose lease ended: each is announced offline unless another live
        entry holds them. Taken a slice at a time (a dead process may leave 20,000)."""
        while True:
            (users,) = await self.batch.run(lambda pipe: pipe.spop(self._users_of(entry), SLICE))
            user_ids = [int(u) for u in users or ()]
            if user_ids:
                live, *replies = await self.batch.run(functools.partial(self._forget, entry, user_ids))
                alive = Lease.live_entries(live)
                # Told a slice at once: one by one, 20,000 users would hold up the lease's
                # renewal, which waits for this sweep, past the TTL.
                gone = [
                    u
                    for u, held in zip(user_ids, replies[1::2], strict=True)
                    if not alive & Lease.live_entries(held)
                ]
                if gone:
                    await asyncio.wait([self._tell(user_id, False) for user_id in gone])
            if len(user_ids) < SLICE:
                return

    def _forget(self, entry: str, user_ids: list[int], pipe: Pipeline) -> None:
        """Drop the entry from each user's set, and read who else holds them."""
        self.lease.live(pipe)
        for user_id in user_ids:
            pipe.srem(self._key(user_id), entry)
            pipe.smembers(self._key(user_id))


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
