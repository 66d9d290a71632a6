"""The keeper of background work: every long-lived task of the app runs under it.

A task that raises is logged, counted and started again after a pause that doubles with each
failure in a row (capped, and jittered so that processes that failed together do not retry in
step); a run that lasted longer than the cap starts the doubling over. Between the failure and
the restart the task is *down*, and /readyz answers 503: a process whose Redis reader or
heartbeats died must not look healthy. A task that returns has finished its work and is not
restarted.

Owners start their tasks by name and stop them in their own teardown, before the resources the
tasks use are closed; `close()` (the keeper's own teardown, last) cancels whatever is left.

Invariant: at most one supervising task per name, and `down` holds exactly the names whose task
failed and waits for its restart.

Hand-written rather than aiojobs: aiojobs reports a failed job to an exception handler but
neither restarts it nor tells /readyz, which is what this is for.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

# The first pause before a restart, and the longest (a task failing at once every time would
# otherwise spin and flood the log).
FIRST_DELAY = 0.5
MAX_DELAY = 30.0

# Called for a fresh coroutine on every (re)start: a coroutine object can only run once.
Work = Callable[[], Awaitable[None]]


class Keeper:
    def __init__(self, first_delay: float = FIRST_DELAY, max_delay: float = MAX_DELAY) -> None:
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.down: set[str] = set()
        self.restarts: Counter[str] = Counter()  # by name, for /metrics
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def spawn(self, name: str, work: Work) -> None:
        """Run `work()` as `name` under supervision, unless a task of that name is running."""
        if self._closed or self.running(name):
            return
        task = asyncio.create_task(self._supervise(name, work), name=name)
        self._tasks[name] = task
        task.add_done_callback(functools.partial(self._forget, name))

    def running(self, name: str) -> bool:
        """Whether a task of that name is running or waiting for its restart."""
        task = self._tasks.get(name)
        return task is not None and not task.done()

    async def stop(self, name: str) -> None:
        """Cancel the task and wait for it to end (a task stopping itself is only cancelled)."""
        task = self._tasks.pop(name, None)
        self.down.discard(name)
        if task is None:
            return
        task.cancel()
        if task is not asyncio.current_task():
            await asyncio.wait([task])

    async def close(self) -> None:
        self._closed = True
        for name in list(self._tasks):
            await self.stop(name)

    def _forget(self, name: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(name) is task:
            del self._tasks[name]
            self.down.discard(name)

    async def _supervise(self, name: str, work: Work) -> None:
        loop = asyncio.get_running_loop()
        failures = 0  # in a row
        while True:
            started = loop.time()
            try:
                await work()
                return
            except Exception:
                log.exception("background task %s failed", name)
            if loop.time() - started > self.max_delay:
                failures = 0  # it had been running fine: a new failure, not a loop
            delay = min(self.max_delay, self.first_delay * 2**failures)
            pause = random.uniform(delay / 2, delay)
            log.warning("background task %s restarts in %.1f s", name, pause)
            self.down.add(name)
            try:
                await asyncio.sleep(pause)
            finally:
                self.down.discard(name)
            self.restarts[name] += 1
            failures += 1


keeper_key = web.AppKey("keeper", Keeper)
