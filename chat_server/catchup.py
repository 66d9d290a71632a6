"""Following the messages table by id, for when announcements cannot be trusted.

While Redis is unreachable, a process cannot hear other processes' inserts, nor order its
own against theirs. It then reads new messages from the database instead, in id order, so
its streams still get every message, in the same order as on every other process. A missing
id is usually an insert not yet committed: wait for it, but not forever (a rolled-back insert
leaves a gap that never fills).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from .errors import Unavailable
from .hub import Hub
from .store import Store

POLL_SECONDS = 0.2
# A gap in the ids older than this is taken to be a rolled-back insert.
GAP_TIMEOUT = 1.0
BATCH = 500


class DatabaseFollower:
    def __init__(self, hub: Hub, store: Store) -> None:
        self.hub = hub
        self.store = store
        self._gap_seen: tuple[int, float] | None = None  # (missing id, first seen at)

    async def run(self) -> None:
        """Deliver new messages from the database until cancelled."""
        while True:
            with contextlib.suppress(Unavailable):
                while await self.poll_once() == BATCH:  # more may be waiting right now
                    pass
            await asyncio.sleep(POLL_SECONDS)

    async def poll_once(self) -> int:
        """Release what is in order now; return how many were released."""
        released = 0
        for message in await self.store.messages_after(self.hub.released_id, BATCH):
            expected = self.hub.released_id + 1
            if message.id != expected and not self._gap_expired(expected):
                break
            self._gap_seen = None
            self.hub.sequencer.release(message)
            released += 1
        return released

    def _gap_expired(self, missing: int) -> bool:
        now = time.monotonic()
        if self._gap_seen is None or self._gap_seen[0] != missing:
            self._gap_seen = (missing, now)
        return now - self._gap_seen[1] > GAP_TIMEOUT
