"""A worker process: opens its share of the streams, reads them, reports what arrived."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import resource
import signal
import time
import traceback
from multiprocessing.connection import Connection

from ..eventloop import new_event_loop
from .config import LoadTestError, keep_error
from .protocol import (
    Finish,
    StreamSpec,
    WorkerCounts,
    WorkerCrashed,
    WorkerJob,
    WorkerReady,
    WorkerResult,
    relay,
)
from .sse_client import SseClient, open_stream
from .wire import Receiver, StreamState

# How often a worker reports its counts.
COUNTS_SECONDS = 0.25
# With --resume, how long a dropped stream waits before reconnecting (the server says 3000 ms;
# shorter here, so that a run's drain window covers the reconnect).
RETRY_SECONDS = 0.5


def worker_main(job: WorkerJob, orders: Connection, reports: Connection) -> None:
    """The process's entry point: its own uvloop loop; every outcome goes back on `reports`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
    raise_open_file_limit()
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            reports.send(runner.run(Worker(job, orders, reports).run()))
    except Exception:
        with contextlib.suppress(OSError):
            reports.send(WorkerCrashed(job.index, traceback.format_exc()))
    finally:
        reports.close()


class Worker:
    def __init__(self, job: WorkerJob, orders: Connection, reports: Connection) -> None:
        self.job = job
        self.orders = orders
        self.reports = reports
        self.receiver = Receiver(job.run_id, job.drop_every)
        self.streams: list[StreamState] = []
        self.readers: list[asyncio.Task[None]] = []
        self.failed = 0
        self.reconnects = 0
        self.errors: list[str] = []
        self.started = self.ready_at = time.time()
        self.cpu_at_start = self.cpu_at_ready = cpu_seconds()

    async def run(self) -> WorkerResult:
        finish: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        relay(self.orders, functools.partial(_settle, finish))
        reporter = asyncio.create_task(self.report_counts())
        try:
            connect_started = time.time()
            await self.open_all()
            self.reports.send(self.ready(connect_started))
            order = await finish
        finally:
            reporter.cancel()
            await asyncio.wait([reporter])
            await self.close_all()
        if not isinstance(order, Finish):
            raise LoadTestError("the main process went away")
        return self.result(order)

    async def open_all(self) -> None:
        specs = self.job.streams
        for start in range(0, len(specs), self.job.ramp_batch):
            batch = specs[start : start + self.job.ramp_batch]
            await asyncio.gather(*(self.open_one(spec) for spec in batch))

    async def open_one(self, spec: StreamSpec) -> None:
        stream = StreamState(spec.chat_id)
        try:
            client = await self.connect(spec, stream, last_id=None)
        except (LoadTestError, OSError, TimeoutError) as exc:
            self.failed += 1
            self.note_error(exc)
            return
        self.streams.append(stream)
        self.readers.append(asyncio.create_task(self.follow(spec, client, stream)))

    async def connect(self, spec: StreamSpec, stream: StreamState, last_id: int | None) -> SseClient:
        params = {"chat_id": str(spec.chat_id)}
        if spec.username is not None:
            params["username"] = spec.username
        stream.pending = b""
        async with asyncio.timeout(self.job.connect_timeout):
            return await open_stream(spec.url, params, last_id, self.receiver, stream, spec.source)

    async def follow(self, spec: StreamSpec, client: SseClient, stream: StreamState) -> None:
        """Wait for the stream to end; with `resume`, reconnect it, as EventSource does."""
        try:
            while True:
                await client.closed
                if not self.job.resume:
                    stream.ended = True  # not reached when cancelled by close_all
                    return
                client = await self.reconnect(spec, stream)
        finally:
            client.close()

    async def reconnect(self, spec: StreamSpec, stream: StreamState) -> SseClient:
        while True:
            await asyncio.sleep(RETRY_SECONDS)  # EventSource's retry delay
            try:
                client = await self.connect(spec, stream, last_id=stream.last_id)
            except (LoadTestError, OSError, TimeoutError) as exc:
                self.note_error(exc)
                continue
            self.reconnects += 1
            return client

    async def close_all(self) -> None:
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)

    def note_error(self, exc: BaseException) -> None:
        keep_error(self.errors, f"{type(exc).__name__}: {exc}")

    async def report_counts(self) -> None:
        with contextlib.suppress(OSError):  # the main process went away: run() ends too
            while True:
                r = self.receiver
                self.reports.send(
                    WorkerCounts(self.job.index, len(self.streams), self.failed, r.received, r.dropped)
                )
                await asyncio.sleep(COUNTS_SECONDS)

    def ready(self, connect_started: float) -> WorkerReady:
        by_chat: dict[int, int] = {}
        for stream in self.streams:
            by_chat[stream.chat_id] = by_chat.get(stream.chat_id, 0) + 1
        self.ready_at, self.cpu_at_ready = time.time(), cpu_seconds()
        return WorkerReady(self.job.index, by_chat, self.failed, connect_started, self.ready_at)

    def result(self, order: Finish) -> WorkerResult:
        expected = {chat: frozenset(ids) for chat, ids in order.ids_by_chat.items()}
        lost = unexpected = 0
        for stream in self.streams:
            missing, extra = stream.tally(expected.get(stream.chat_id, frozenset()))
            lost += missing
            unexpected += extra
        r = self.receiver
        now, cpu = time.time(), cpu_seconds()
        return WorkerResult(
            index=self.job.index,
            received=r.received,
            dropped=r.dropped,
            lost=lost,
            duplicated=sum(s.duplicated for s in self.streams),
            out_of_order=sum(s.out_of_order for s in self.streams),
            unexpected=unexpected,
            ended_early=sum(s.ended for s in self.streams),
            reconnects=self.reconnects,
            latencies_ms=r.latencies_ms.tobytes(),
            last_ns=r.last_ns,
            cpu_seconds=cpu - self.cpu_at_start,
            wall_seconds=now - self.started,
            busy_cpu_seconds=cpu - self.cpu_at_ready,
            busy_wall_seconds=now - self.ready_at,
            errors=self.errors,
        )


def _settle(future: asyncio.Future[object], value: object) -> None:
    if not future.done():
        future.set_result(value)


def cpu_seconds() -> float:
    """User and system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_open_file_limit() -> None:
    """Each stream is a socket: raise the soft limit on open files to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
