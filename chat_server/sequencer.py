"""Releasing messages in id order although concurrent inserts commit out of order.

Auto-increment ids are not commit-ordered: id 11 can commit (and be announced) before id 10.
Every insert is announced twice, `start` before the INSERT is sent and `done` after it
committed, and every process sees all announcements in one order (in-process, or through one
Redis channel). If id L < id H, L's INSERT got its id before H's did, so `start(L)` was
announced before `done(H)`. Hence a message is safe to release once every insert whose start
was seen before its done has finished; released messages go out in id order.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Hashable

from .models import Message

# An insert not done after this long is given up on (its process died, or its `done` was lost),
# so it cannot hold back everyone else's messages for longer.
START_TIMEOUT = 5.0


class Sequencer:
    def __init__(self, release: Callable[[Message], None], start_timeout: float = START_TIMEOUT) -> None:
        self._release_one = release
        self.start_timeout = start_timeout
        self.released_id = 0
        self.late = 0  # messages released after a larger id (only past a timed-out start)
        self._arrivals = itertools.count()
        self._in_flight: dict[Hashable, tuple[int, float]] = {}  # token -> (arrival, started at)
        self._waiting: list[tuple[int, int, int, Message | None]] = []  # (id, barrier, arrival, msg)

    def start(self, token: Hashable) -> None:
        self._in_flight[token] = (next(self._arrivals), time.monotonic())

    def done(self, token: Hashable, message: Message | None) -> None:
        """The insert of `token` finished: with its message, or with None when it failed."""
        arrival = next(self._arrivals)
        if self._in_flight.pop(token, None) is None and message is not None:
            # Its start timed out (or was never seen): deliver now rather than never.
            if message.id <= self.released_id:
                self.late += 1
            self._emit(message)
            return
        heapq.heappush(self._waiting, (message.id if message else -1, arrival, arrival, message))
        self._drain()

    def expire(self) -> None:
        """Give up on inserts older than the timeout; call it periodically."""
        deadline = time.monotonic() - self.start_timeout
        stale = [t for t, (_, started) in self._in_flight.items() if started < deadline]
        for token in stale:
            del self._in_flight[token]
        if stale:
            self._drain()

    def reset(self, released_id: int) -> None:
        """Forget everything in flight (after losing the announcement channel)."""
        self._in_flight.clear()
        self._waiting.clear()
        self.released_id = released_id

    def release(self, message: Message) -> None:
        """Hand over a message known to come in order (the database follower's)."""
        self._emit(message)

    @property
    def idle(self) -> bool:
        return not self._in_flight and not self._waiting

    def _drain(self) -> None:
        oldest = min((a for a, _ in self._in_flight.values()), default=None)
        while self._waiting:
            _, barrier, _, message = self._waiting[0]
            if oldest is not None and oldest < barrier:
                return
            heapq.heappop(self._waiting)
            if message is not None:
                self._emit(message)

    def _emit(self, message: Message) -> None:
        self.released_id = max(self.released_id, message.id)
        self._release_one(message)
