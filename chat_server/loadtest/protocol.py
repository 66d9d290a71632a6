"""What the main process and the worker processes tell each other, over one-way pipes.

main -> worker: a WorkerJob (at start), then Finish once the run is over.
worker -> main: WorkerCounts now and then, WorkerReady once every stream was tried, then a
WorkerResult (or WorkerCrashed).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection


@dataclass(frozen=True)
class StreamSpec:
    url: str  # the server's /api/stream
    chat_id: int
    username: str | None  # None for General, which needs no identity
    source: str | None = None  # the local address to connect from (None: the system's choice)


@dataclass(frozen=True)
class WorkerJob:
    index: int
    streams: list[StreamSpec]
    run_id: str
    ramp_batch: int  # streams this worker connects at once
    connect_timeout: float
    drop_every: int
    resume: bool  # reconnect ended streams with Last-Event-ID


@dataclass(frozen=True)
class WorkerCounts:
    index: int
    connected: int
    failed: int
    received: int
    dropped: int


@dataclass(frozen=True)
class WorkerReady:
    index: int
    connected_by_chat: dict[int, int]
    failed: int
    started: float  # time.time() of the first connect and after the last
    finished: float


@dataclass(frozen=True)
class WorkerResult:
    index: int
    received: int
    dropped: int
    lost: int
    duplicated: int
    out_of_order: int
    unexpected: int  # this run's messages that were not among those posted (a post that timed out)
    ended_early: int
    reconnects: int
    latencies_ms: bytes  # array("d") of the delivery latencies
    last_ns: int | None
    cpu_seconds: float  # over the whole run
    wall_seconds: float
    busy_cpu_seconds: float  # once all streams were open: while messages were posted and delivered
    busy_wall_seconds: float
    errors: list[str]


@dataclass(frozen=True)
class WorkerCrashed:
    index: int
    error: str


@dataclass(frozen=True)
class Finish:
    """The run is over: what was posted to each chat. Close the streams and report."""

    ids_by_chat: dict[int, list[int]]


def relay(conn: Connection, deliver: Callable[[object], object]) -> None:
    """Hand each object received on `conn` to `deliver` on this loop, then None at its end.

    A blocking read in a daemon thread: registering the pipe with the event loop would make
    it non-blocking (libuv does), and a large message would then fail half-sent.
    """
    loop = asyncio.get_running_loop()

    def pump() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = None
            try:
                loop.call_soon_threadsafe(deliver, message)
            except RuntimeError:  # the loop is closed: nobody is listening
                return
            if message is None:
                return

    threading.Thread(target=pump, name="loadtest-relay", daemon=True).start()
