"""Releasing messages in id order, each once, although concurrent inserts commit out of order.

Auto-increment ids are not commit-ordered: id 11 can commit (and be heard of) before id 10.
The sequencer holds what it is offered and releases by id, with one watermark, `released_id`:

    Every id up to `released_id` has been released exactly once, or is proven never to
    commit; nothing is ever released at or below it afterwards.

It moves past a missing id only when the database proved that id absent (see
`DatabaseFollower`): never on a timer, and never because an announcement was missed. So a
stream that replays from the database up to the watermark, then takes live messages above it,
sees every message once and in order, whatever was lost on the way. Offers come from the
process's own inserts, other processes' announcements and reads of the table, in any order and
any number of times: a duplicate is dropped by id.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable

from .histogram import Histogram
from .models import Message

# Proven-absent id ranges kept to recognise a late message (which would mean a wrong proof).
ABSENT_HISTORY = 1024


class Sequencer:
    def __init__(
        self,
        release: Callable[[Message], None],
        released_id: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._release_one = release
        self._clock = clock
        self.released_id = released_id
        self.late = 0  # offers of an id proven absent: expected to stay 0
        self.proven_absent = 0  # ids the database proved never commit (rolled back, failed)
        # What order costs: from each message's first offer to its release (0 when it was next).
        # With several processes, a message waits here for lower ids stored by the others.
        self.held_for = Histogram()
        self._held: dict[int, tuple[Message, float]] = {}  # id -> (message, when first offered)
        self._heap: list[int] = []  # the held ids
        self._absent: deque[tuple[int, int]] = deque(maxlen=ABSENT_HISTORY)  # (first, last)
        self._gap: tuple[int, float] | None = None  # (the missing id, since when)

    def offer(self, message: Message) -> None:
        """A committed message, from anywhere: released now if it is next, else held."""
        if message.id <= self.released_id:
            if self._was_proven_absent(message.id):
                # Only a wrong proof gets here. Deliver rather than drop: streams past it
                # skip it, so it is counted, and a resume from the database shows it.
                self.late += 1
                self._release_one(message)
            return
        if message.id in self._held:
            return
        now = self._clock()
        self._held[message.id] = (message, now)
        heapq.heappush(self._heap, message.id)
        self._drain(now)

    def offer_all(self, messages: list[Message]) -> None:
        for message in messages:
            self.offer(message)

    @property
    def gap_below(self) -> int | None:
        """The smallest held id when an id below it is missing: what a proof must settle."""
        return self._heap[0] if self._heap else None

    def gap_age(self) -> float:
        """Seconds the current gap has been waiting (0 without one)."""
        return 0.0 if self._gap is None else self._clock() - self._gap[1]

    def settle_below(self, upto: int) -> None:
        """The database proved that no id below `upto` that is not held yet will ever commit:
        release what is held below it and move the watermark past the rest."""
        while self.released_id + 1 < upto:
            nxt = self._heap[0] if self._heap else upto
            last_absent = min(nxt, upto) - 1
            if last_absent > self.released_id:
                self._absent.append((self.released_id + 1, last_absent))
                self.proven_absent += last_absent - self.released_id
                self.released_id = last_absent
            self._drain(self._clock())
        self._drain(self._clock())

    @property
    def idle(self) -> bool:
        return not self._held

    def _drain(self, now: float) -> None:
        """Release what is next, in order (`now`: the clock read once for the whole run)."""
        heap = self._heap
        while heap and heap[0] == self.released_id + 1:
            message, offered = self._held.pop(heapq.heappop(heap))
            self.released_id = message.id
            self.held_for.observe(now - offered)
            self._release_one(message)
        if not heap:
            self._gap = None
        elif self._gap is None or self._gap[0] != self.released_id + 1:
            self._gap = (self.released_id + 1, now)

    def _was_proven_absent(self, message_id: int) -> bool:
        return any(first <= message_id <= last for first, last in self._absent)
