"""This process's lease in Redis: presence and stream-slot records that outlive their process by
at most the TTL, without a refresh of each record.

`<ns>:leases` is a sorted set of entry ids, each scored with when its lease ends. A process
renews its own every third of the TTL: one command, whatever its number of users and streams.
The records of users online and of open streams name the entry they belong to and carry no
expiry of their own; whoever reads them counts only the entries whose lease is live. (Before,
every record had its own expiry, refreshed every third of the TTL: two commands per online user
and two per stream owner, which at 4 million streams would have been 1.6 million commands a
second on Redis; docs/scaling.md.)

A lease that ran out (its process died, or was paused or cut off from Redis past the TTL) is
claimed by the first process to sweep it, atomically, so one process undoes its records. Its own
process, if it comes back, finds its lease gone or ended and takes a new entry id (the next
generation) and writes its users and streams again under it: a sweep of the old id, which may
still be running, never touches the new one. (A sweep cut off midway leaves the rest of its
records behind: they count for no one, as their lease is gone; only the offline announcements
of those users are lost, as they were with per-record expiries.)

Invariant: an entry's records are written only while it is this process's entry; a claimed
entry is never renewed (renewing and claiming each check the score in one script).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Iterable
from typing import Protocol

from aiohttp import web

from .keeper import Keeper
from .redis_batch import SLICE, Pipeline, RedisBatch
from .redis_policy import FAILURES

# A lost lease's rewrite paces its slices over this fraction of the TTL: connects, posts and
# deliveries go out between them.
REWRITE_SPREAD = 1 / 6
# Renew an entry only while its lease is live: a lease that ran out may be claimed any moment.
RENEW = """
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ends and tonumber(ends) > tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"""
# Claim an entry only while its lease has ended: one sweeper wins, and a live one is never taken.
CLAIM = """
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ends and tonumber(ends) <= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


class Holder(Protocol):
    """What keeps records under this process's entry (presence, stream slots)."""

    async def rewrite(self, spread: float) -> None:
        """The lease was lost or spoiled: write every record again under the new entry, paced
        over `spread`."""

    async def sweep(self, entry: str) -> None:
        """Undo the records of `entry`, whose lease ended and which this process claimed."""


class Lease:
    def __init__(self, batch: RedisBatch, namespace: str, process_id: str, ttl: float) -> None:
        self.batch = batch
        self.namespace = namespace
        self.key = f"{namespace}:leases"
        self.process_id = process_id
        self.ttl = ttl
        self.generation = 0
        self.holders: list[Holder] = []
        # Writes that may have been lost so far, and how many of them a new entry has made good.
        self._spoiled = self._made_good = 0
        self._keeper: Keeper | None = None

    @property
    def entry(self) -> str:
        return f"{self.process_id}/{self.generation}"

    def is_own(self, entry: str) -> bool:
        """An entry of this process, of any generation."""
        return entry.partition("/")[0] == self.process_id

    def spoil(self) -> None:
        """A write under the entry may have been lost (Redis failed): at the next renewal every
        holder writes its records again under a new entry, and the old one is let go."""
        self._spoiled += 1

    def live(self, pipe: Pipeline) -> None:
        """Queue the read of every live entry (see `live_entries`)."""
        pipe.zrangebyscore(self.key, time.time(), "+inf")

    @staticmethod
    def live_entries(reply: Iterable[bytes | str]) -> set[str]:
        return {text(entry) for entry in reply}

    async def start(self, keeper: Keeper) -> None:
        """Take the first lease (if Redis does not answer, the first renewal takes one), and keep
        it renewed for the process's life."""
        with contextlib.suppress(*FAILURES):
            await self.take()
        self._keeper = keeper
        keeper.spawn("lease", self._keep_forever)

    async def _keep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            with contextlib.suppress(*FAILURES):
                await self.keep(spread=self.ttl * REWRITE_SPREAD)

    async def keep(self, spread: float) -> None:
        """One period's work: renew the lease, then sweep the entries whose lease ended. A lease
        that was lost, or spoiled, is replaced by a new entry that every holder writes its
        records under (paced over `spread`); a spoiled one is then ended, to be swept."""
        spoiled, old = self._spoiled, self.entry
        if not await self._renew() or spoiled != self._made_good:
            self.generation += 1
            await self.take()
            for holder in self.holders:
                await holder.rewrite(spread)
            await self._end(old)
            self._made_good = spoiled
        for entry in await self._claim_ended():
            for holder in self.holders:
                await holder.sweep(entry)

    async def close(self) -> None:
        """Give the lease up: the records left under it stop counting at once, and the next
        process to sweep undoes them."""
        if self._keeper is not None:
            await self._keeper.stop("lease")
        with contextlib.suppress(*FAILURES):
            await self._end(self.entry)

    async def _end(self, entry: str) -> None:
        """End an entry's lease now (if it is still there), for a sweep to claim."""
        await self.batch.run(lambda pipe: pipe.zadd(self.key, {entry: 0}, xx=True))

    async def take(self) -> None:
        """Write this process's entry with a fresh lease."""
        entry, ends = self.entry, time.time() + self.ttl
        await self.batch.run(lambda pipe: pipe.zadd(self.key, {entry: ends}))

    async def _renew(self) -> bool:
        entry, now = self.entry, time.time()
        ends = now + self.ttl
        (renewed,) = await self.batch.run(lambda pipe: pipe.eval(RENEW, 1, self.key, entry, now, ends))
        return bool(renewed)

    async def _claim_ended(self) -> list[str]:
        """Entries whose lease ended that this process claimed, a slice read at a time."""
        claimed: list[str] = []
        while True:
            now = time.time()
            (ended,) = await self.batch.run(functools.partial(self._ended, now=now))
            entries = [text(entry) for entry in ended]
            won = await self.batch.run(functools.partial(self._claim, entries, now=now))
            claimed += [entry for entry, took in zip(entries, won, strict=True) if took]
            if len(entries) < SLICE:
                return claimed

    def _ended(self, pipe: Pipeline, *, now: float) -> None:
        pipe.zrangebyscore(self.key, "-inf", now, start=0, num=SLICE)

    def _claim(self, entries: list[str], pipe: Pipeline, *, now: float) -> None:
        for entry in entries:
            pipe.eval(CLAIM, 1, self.key, entry, now)


def text(value: object) -> str:
    """A Redis reply's bytes as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


lease_key = web.AppKey("lease", Lease)
