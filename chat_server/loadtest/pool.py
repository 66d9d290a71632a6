"""The main process's side of the workers: start them, follow their reports, collect results."""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from .config import LoadTestError
from .protocol import (
    Finish,
    WorkerCounts,
    WorkerCrashed,
    WorkerJob,
    WorkerReady,
    WorkerResult,
    relay,
)
from .worker import worker_main

# How long workers get to close their streams and report once told to finish, and to exit.
FINISH_TIMEOUT = 120.0
JOIN_TIMEOUT = 10.0


class WorkerPool:
    """The stream-reading processes (spawned: a clean interpreter each) and their last reports."""

    def __init__(self, jobs: list[WorkerJob]) -> None:
        self.jobs = jobs
        self.counts: dict[int, WorkerCounts] = {}
        self.ready: dict[int, WorkerReady] = {}
        self.results: dict[int, WorkerResult] = {}
        self.crashes: list[str] = []
        self._processes: list[BaseProcess] = []
        self._orders: list[Connection] = []
        self._changed = asyncio.Event()

    async def __aenter__(self) -> WorkerPool:
        context = multiprocessing.get_context("spawn")
        for job in self.jobs:
            orders_out, orders_in = context.Pipe(duplex=False)
            reports_out, reports_in = context.Pipe(duplex=False)
            process = context.Process(
                target=worker_main, args=(job, orders_out, reports_in), name=f"loadtest-{job.index}"
            )
            process.start()
            # Only the worker holds these ends now, so its exit is seen as the end of `reports`.
            orders_out.close()
            reports_in.close()
            self._processes.append(process)
            self._orders.append(orders_in)
            relay(reports_out, functools.partial(self._handle, job.index))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for orders in self._orders:
            orders.close()  # a worker still waiting for Finish gives up
        for process in self._processes:
            await asyncio.to_thread(process.join, JOIN_TIMEOUT)
            if process.is_alive():
                process.terminate()
                await asyncio.to_thread(process.join, JOIN_TIMEOUT)

    def _handle(self, index: int, message: object) -> None:
        self._changed.set()
        if message is None and index not in self.results:
            self.crashes.append(f"worker {index} exited without a result")
        elif isinstance(message, WorkerCounts):
            self.counts[index] = message
        elif isinstance(message, WorkerReady):
            self.ready[index] = message
        elif isinstance(message, WorkerResult):
            self.results[index] = message
        elif isinstance(message, WorkerCrashed):
            self.crashes.append(f"worker {index} failed:\n{message.error}")

    async def _until(self, condition: Callable[[], bool]) -> None:
        """Follow the reports until `condition()` holds; raise if a worker died."""
        while not condition():
            if self.crashes:
                raise LoadTestError("\n".join(self.crashes))
            self._changed.clear()
            await self._changed.wait()

    def total(self, what: str) -> int:
        """The sum of one WorkerCounts field over the workers, as last reported."""
        return sum(getattr(counts, what) for counts in self.counts.values())

    def connected_by_chat(self) -> dict[int, int]:
        total: dict[int, int] = {}
        for ready in self.ready.values():
            for chat, count in ready.connected_by_chat.items():
                total[chat] = total.get(chat, 0) + count
        return total

    async def wait_ready(self) -> list[WorkerReady]:
        """Until every worker tried all its streams."""
        await self._until(lambda: len(self.ready) == len(self.jobs))
        return [self.ready[job.index] for job in self.jobs]

    async def wait_delivered(self, expected: int) -> None:
        """Until `expected` deliveries arrived (those dropped on purpose included)."""
        await self._until(lambda: self.total("received") + self.total("dropped") >= expected)

    async def finish(self, ids_by_chat: dict[int, list[int]]) -> list[WorkerResult]:
        for orders in self._orders:
            orders.send(Finish(ids_by_chat))
        try:
            async with asyncio.timeout(FINISH_TIMEOUT):
                await self._until(lambda: len(self.results) == len(self.jobs))
        except TimeoutError:
            raise LoadTestError("workers did not report in time") from None
        return [self.results[job.index] for job in self.jobs]
