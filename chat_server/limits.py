"""Rate limits on posting and login, and the cap on open streams per user.

Counters live in this process, or in Redis when the app has one, so that every process shares
them. Rate limits are fixed windows aligned on the clock (INCR and PEXPIRE of one key per
window), so all processes agree on when a window ends. Open streams are counted per owner and
process under the process's lease (leases.py), so the streams of a process that died stop
counting when its lease ends, as with presence. If Redis does not answer, the in-process
counters decide: a limit is then per process, but no request fails because Redis is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

from aiohttp import web

from .errors import ApiError, Conflict, TooManyRequests, Unauthorized
from .leases import Lease, text
from .redis_batch import SLICE, Pipeline, RedisBatch
from .redis_policy import FAILURES, RedisGuard
from .settings import Settings

# A refused stream has no window to wait for; a client may try again after this.
STREAM_RETRY_AFTER = 5.0
# In-process counters are swept of ended windows once there are this many.
SWEEP_AT = 10_000


@dataclass(frozen=True)
class Rate:
    limit: int  # at most this many per window; 0 means no limit
    window: float  # seconds


class LocalCounters:
    """Fixed-window counters in this process."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[float, int]] = {}  # key -> (window end, count)
        self._sweep_at = SWEEP_AT

    def hit(self, key: str, rate: Rate, now: float) -> float | None:
        """Count one; the seconds until the window ends if that went over the limit, else None."""
        end = _window_end(now, rate.window)
        seen_end, count = self._counts.get(key, (end, 0))
        count = count + 1 if seen_end == end else 1
        if len(self._counts) >= self._sweep_at:
            self._counts = {k: v for k, v in self._counts.items() if v[0] > now}
            # Many live keys: sweep again only once there are twice as many (amortised O(1)).
            self._sweep_at = max(SWEEP_AT, 2 * len(self._counts))
        self._counts[key] = (end, count)
        return end - now if count > rate.limit else None

    def refund(self, key: str, rate: Rate, now: float) -> None:
        """Take back one count of the current window (a login that turned out right)."""
        end, count = self._counts.get(key, (0.0, 0))
        if end == _window_end(now, rate.window) and count > 0:
            self._counts[key] = (end, count - 1)


Hits = list[tuple[str, Rate]]


class RateLimiter:
    def __init__(self) -> None:
        self.local = LocalCounters()

    async def hit(self, hits: Hits) -> float | None:
        """Count one against each (key, rate); the longest wait of those over their limit, or
        None when none is."""
        return self._local_hits(hits, time.time())

    def _local_hits(self, hits: Hits, now: float) -> float | None:
        waits = [self.local.hit(key, rate, now) for key, rate in hits]
        return max((w for w in waits if w is not None), default=None)

    async def refund(self, hits: Hits) -> None:
        self._local_refund(hits, time.time())

    def _local_refund(self, hits: Hits, now: float) -> None:
        for key, rate in hits:
            self.local.refund(key, rate, now)


class RedisRateLimiter(RateLimiter):
    def __init__(self, batch: RedisBatch, namespace: str) -> None:
        super().__init__()
        self.batch = batch
        self.namespace = namespace
        self.guard = RedisGuard("rate limits")

    async def hit(self, hits: Hits) -> float | None:
        """All counters in one operation (concurrent requests share a round trip)."""
        now = time.time()
        if not self.guard.ready():
            return self._local_hits(hits, now)
        ends = [_window_end(now, rate.window) for _, rate in hits]

        def count(pipe: Pipeline) -> None:
            for (key, _), end in zip(hits, ends, strict=True):
                name = self._name(key, end)
                pipe.incr(name)
                # Kept a little past the window's end, so a slow clock elsewhere finds it.
                pipe.pexpire(name, math.ceil((end - now + 1) * 1000))

        try:
            replies = await self.batch.run(count)
        except FAILURES as exc:
            self.guard.failed(exc)
            return self._local_hits(hits, now)
        self.guard.succeeded()
        counts = replies[::2]
        waits = [
            end - now
            for (_, rate), end, count in zip(hits, ends, counts, strict=True)
            if int(count) > rate.limit
        ]
        return max(waits, default=None)

    async def refund(self, hits: Hits) -> None:
        """Take back one count of each (in Redis, or here if that is where it was counted)."""
        now = time.time()
        if not self.guard.ready():
            self._local_refund(hits, now)
            return

        def take_back(pipe: Pipeline) -> None:
            for key, rate in hits:
                end = _window_end(now, rate.window)
                pipe.decr(self._name(key, end))
                pipe.pexpire(self._name(key, end), math.ceil((end - now + 1) * 1000))

        try:
            await self.batch.run(take_back)
        except FAILURES as exc:
            self.guard.failed(exc)
            self._local_refund(hits, now)

    def _name(self, key: str, window_end: float) -> str:
        return f"{self.namespace}:rate:{key}:{window_end:.3f}"


class StreamSlots:
    """Open streams per owner (a user id, or "addr:<address>" for anonymous streams): in this
    process, and in Redis for `RedisStreamSlots`."""

    def __init__(self) -> None:
        self._local: dict[str, set[str]] = {}  # owner -> this process's open streams
        self._names = itertools.count()

    def hold(self, user_id: str, cap: int) -> contextlib.AbstractAsyncContextManager[None]:
        """A slot for the body of the block (a stream's life); 429 when the owner has `cap` open."""
        return _UNCAPPED if cap <= 0 else _Slot(self, user_id, cap, str(next(self._names)))

    async def _count_with(self, user_id: str, slot: str) -> int:
        """Add the slot; the user's open streams, this one included."""
        slots = self._local.setdefault(user_id, set())
        slots.add(slot)
        return len(slots)

    async def _drop(self, user_id: str, slot: str) -> None:
        slots = self._local.get(user_id)
        if slots is not None:
            slots.discard(slot)
            if not slots:
                del self._local[user_id]


class _Slot:
    """One stream's slot (a plain class, not a generator: thousands stay open)."""

    __slots__ = ("cap", "name", "slots", "user_id")

    def __init__(self, slots: StreamSlots, user_id: str, cap: int, name: str) -> None:
        self.slots = slots
        self.user_id = user_id
        self.cap = cap
        self.name = name

    async def __aenter__(self) -> None:
        try:
            count = await self.slots._count_with(self.user_id, self.name)
        except BaseException:  # e.g. the client hung up meanwhile: the slot was counted already
            await self.__aexit__()
            raise
        if count > self.cap:
            await self.__aexit__()
            raise TooManyRequests("too many open streams", STREAM_RETRY_AFTER, limit=self.cap)

    async def __aexit__(self, *exc_info: object) -> None:
        # Shielded: the stream's task is usually being cancelled right now.
        await asyncio.shield(self.slots._drop(self.user_id, self.name))


class RedisStreamSlots(StreamSlots):
    """Each owner's open streams per process, in Redis under this process's lease (leases.py):
    a hash per owner of entry -> that entry's count, and a set per entry of its owners (what a
    sweep undoes). Streams count while their entry holds a live lease. Adds and drops go through
    the process's `RedisBatch`, so they reach Redis in the order made; each writes the owner's
    count here as it is when sent (not plus or minus one), so a write that was lost is made good
    by the next one."""

    def __init__(self, lease: Lease) -> None:
        super().__init__()
        self.lease = lease
        self.batch = lease.batch
        self.namespace = lease.namespace
        self.guard = RedisGuard("stream cap")
        lease.holders.append(self)

    def _key(self, user_id: str) -> str:
        return f"{self.namespace}:streams:{user_id}"

    def _owners_of(self, entry: str) -> str:
        return f"{self.namespace}:streams:of:{entry}"

    async def _count_with(self, user_id: str, slot: str) -> int:
        local = await super()._count_with(user_id, slot)
        if not self.guard.ready():
            self.lease.spoil()  # written under a new entry at the next renewal
            return local

        def add(pipe: Pipeline) -> None:
            self._write(pipe, user_id)
            pipe.hgetall(self._key(user_id))
            self.lease.live(pipe)

        try:
            *_, counts, live = await self.batch.run(add)
        except FAILURES as exc:
            self.guard.failed(exc)
            self.lease.spoil()
            return local
        self.guard.succeeded()
        alive = Lease.live_entries(live)
        return local + sum(
            int(n) for e, n in counts.items() if (entry := text(e)) in alive and not self.lease.is_own(entry)
        )

    async def _drop(self, user_id: str, slot: str) -> None:
        await super()._drop(user_id, slot)
        if self.guard.ready():
            with contextlib.suppress(*FAILURES):
                await self.batch.run(lambda pipe: self._write(pipe, user_id))
                return
        self.lease.spoil()  # written under a new entry at the next renewal

    def _write(self, pipe: Pipeline, user_id: str) -> None:
        """The owner's streams here, as they are when the operation is sent."""
        count, entry = len(self._local.get(user_id, ())), self.lease.entry
        if count:
            pipe.hset(self._key(user_id), entry, count)
            pipe.sadd(self._owners_of(entry), user_id)
        else:
            pipe.hdel(self._key(user_id), entry)
            pipe.srem(self._owners_of(entry), user_id)

    async def rewrite(self, spread: float) -> None:
        """Every owner's count, again under the lease's new entry, a slice of owners at a time
        paced over `spread` seconds."""
        await self.batch.run_sliced(list(self._local), self._rewrite, spread)

    def _rewrite(self, owners: Sequence[str], pipe: Pipeline) -> None:
        for owner in owners:
            self._write(pipe, owner)

    async def sweep(self, entry: str) -> None:
        """Forget the counts of an entry whose lease ended, a slice of owners at a time."""
        while True:
            (owners,) = await self.batch.run(lambda pipe: pipe.spop(self._owners_of(entry), SLICE))
            if owners:
                await self.batch.run(functools.partial(self._forget, entry, owners))
            if len(owners or ()) < SLICE:
                return

    def _forget(self, entry: str, owners: list[bytes], pipe: Pipeline) -> None:
        for owner in owners:
            pipe.hdel(self._key(text(owner)), entry)


class Limits:
    """What the handlers ask: may this post, this login, this stream go ahead? (429 if not.)"""

    def __init__(self, settings: Settings, rates: RateLimiter, streams: StreamSlots) -> None:
        self.settings = settings
        self.rates = rates
        self.streams = streams

    # The address is checked first, before anything else is done: a flood of posts under ever
    # new usernames is refused before it creates users (and `signups` limits those anyway).

    async def address_posts(self, request: web.Request) -> None:
        await self._hit("messages", (f"post:addr:{_address(request)}", self.settings.post_limit_address))

    async def user_posts(self, user_id: int) -> None:
        await self._hit("messages", (f"post:user:{user_id}", self.settings.post_limit_user))

    async def user_typing(self, user_id: int) -> None:
        await self._hit("typing notices", (f"typing:user:{user_id}", self.settings.typing_limit_user))

    @contextlib.asynccontextmanager
    async def login_attempt(self, request: web.Request, user_id: int | None) -> AsyncIterator[None]:
        """Count the login run in the block as failed, from this address (for this user, and in
        all), unless it succeeds: 429 before it runs when the address failed too often. Only
        failures count, and only the failing address's: others' wrong guesses never stop the
        right password from elsewhere."""
        address = _address(request)
        limits = [(f"login:fail:addr:{address}", self.settings.login_limit_address)]
        if user_id is not None:
            limits.append((f"login:fail:user:{user_id}:{address}", self.settings.login_limit_user))
        hits = self._hits(limits)
        await self._hit("failed logins", *limits)
        try:
            yield
        except (Unauthorized, Conflict):
            raise  # a failure: it stays counted
        except ApiError:
            await self._refund(hits)  # a bad request or a database away: not a guess
            raise
        await self._refund(hits)

    async def _refund(self, hits: Hits) -> None:
        if hits:
            await self.rates.refund(hits)

    async def signups(self, request: web.Request) -> None:
        """Before a new user is made (at login, or by posting under a new name)."""
        await self._hit("new users", (f"signup:addr:{_address(request)}", self.settings.signup_limit_address))

    def stream(
        self, request: web.Request, user_id: int | None
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """A slot for a stream of the user, or of the client address for anonymous streams."""
        if user_id is None:
            return self.streams.hold(f"addr:{_address(request)}", self.settings.max_streams_per_address)
        return self.streams.hold(str(user_id), self.settings.max_streams_per_user)

    def _hits(self, limits: Iterable[tuple[str, int]]) -> Hits:
        window = self.settings.rate_window
        return [(key, Rate(limit, window)) for key, limit in limits if limit > 0]

    async def _hit(self, what: str, *limits: tuple[str, int]) -> None:
        hits = self._hits(limits)
        if not hits:
            return
        wait = await self.rates.hit(hits)
        if wait is not None:
            raise TooManyRequests(f"too many {what}: try again later", wait)


def _window_end(now: float, window: float) -> float:
    return (math.floor(now / window) + 1) * window


def _address(request: web.Request) -> str:
    return request.remote or "unknown"


# Streams that no cap applies to share one do-nothing context (there may be 10,000 of them).
_UNCAPPED: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()

limits_key = web.AppKey("limits", Limits)
