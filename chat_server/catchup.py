"""Following the messages table past the watermark, and proving missing ids absent.

Announcements bring messages quickly, but some never come: Redis was down, or a process was
killed between its commit and its announcement. And an id that will never commit (a failed or
rolled-back insert) is announced by nobody. The table is the truth for both:

- Reading rows past the sequencer's watermark hands it whatever was not announced.
- A missing id below a committed one was handed out before it, so its writer had begun by the
  time the committed one was known. Once every transaction running then has ended
  (`Store.writes_settled`), the table shows the missing id or it never will: read again, and
  what is still missing is proven absent. No timer decides it.

While announcements are trusted the table is read only for a gap that waited `GAP_WAIT`, and
every `POLL_HEALTHY` for announcements lost without notice; while degraded, every
`POLL_DEGRADED`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from .errors import Unavailable
from .models import Message
from .sequencer import Sequencer

TICK = 0.1
POLL_DEGRADED = 0.2
POLL_HEALTHY = 2.0
# Concurrent inserts commit out of order, and their announcements fill such gaps within
# milliseconds: only a gap that waits longer is worth a proof.
GAP_WAIT = 0.5
BATCH = 500


class Table(Protocol):
    """What the follower reads (`Store` provides it)."""

    async def messages_after(self, after_id: int, limit: int) -> list[Message]: ...

    async def writes_settled(self, after_id: int, below_id: int) -> None: ...


class DatabaseFollower:
    def __init__(self, sequencer: Sequencer, table: Table) -> None:
        self.sequencer = sequencer
        self.table = table
        self.degraded = False  # set by the broker while announcements cannot be trusted
        self.gap_waits = 0  # proofs run: gaps that announcements did not fill in time

    async def run(self) -> None:
        """Read the table when it is due, until cancelled."""
        loop = asyncio.get_running_loop()
        last_read = loop.time()
        while True:
            await asyncio.sleep(TICK)
            every = POLL_DEGRADED if self.degraded else POLL_HEALTHY
            if self.sequencer.gap_age() < GAP_WAIT and loop.time() - last_read < every:
                continue
            with contextlib.suppress(Unavailable):  # the database is away: try again next time
                await self.catch_up()
            last_read = loop.time()

    async def catch_up(self) -> None:
        """Offer the table's rows past the watermark; prove any id still missing below them."""
        await self._read(upto=None)
        top = self.sequencer.gap_below
        if top is None:
            return
        self.gap_waits += 1
        await self.table.writes_settled(self.sequencer.released_id, top)
        await self._read(upto=top)
        self.sequencer.settle_below(top)

    async def _read(self, upto: int | None) -> None:
        """Offer rows after the watermark: all below `upto`, or (without it) while they release."""
        sequencer = self.sequencer
        after = sequencer.released_id
        while True:
            rows = await self.table.messages_after(after, BATCH)
            sequencer.offer_all(rows)
            if len(rows) < BATCH:
                return
            after = rows[-1].id
            if (upto is not None and after >= upto) or (upto is None and sequencer.released_id < after):
                return  # past what the proof needs, or held behind a gap that a proof settles
