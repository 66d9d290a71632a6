"""`run.py --workers N`: N worker processes on one port, replaced one at a time on SIGHUP (a
rolling restart: new code, nothing dropped) and restarted with a growing delay when they crash.

Each worker slot owns a listening socket bound with SO_REUSEPORT, created here and handed to the
slot's worker. A rolling restart starts the slot's new worker on the same socket, waits until the
new worker says it is serving, and only then stops the old one: the socket never closes, so no
connection waiting in its queue is reset, and only the old worker's streams reconnect (resuming by
Last-Event-ID). The next slot starts only once the old worker has exited, so at most one worker's
streams reconnect at a time. A crashed worker's socket is closed at once, so new connections go
to the other workers while it waits for its restart.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

# The first restart after a crash comes almost at once; each crash in a row doubles the wait.
RESTART_BASE_SECONDS = 0.25
# A worker that cannot start (database URL wrong, disk full) is retried this often at most.
RESTART_MAX_SECONDS = 30.0
# A worker that served this long has recovered: its next crash starts again at the base delay.
STABLE_SECONDS = 60.0
# A new worker that does not serve within this is given up on, and the rolling restart stops.
READY_TIMEOUT = 60.0
# An old worker ends its streams at once; one still running after this is killed.
RETIRE_TIMEOUT = 20.0
READY = b"ready"

# The worker's entry point: target(ready, sock, *args), where ready() is to be called once serving.
WorkerTarget = Callable[..., None]


@dataclass
class Backoff:
    """The delay before restarting a crashed worker: doubling with each crash in a row, capped,
    and back to the base once a worker has stayed up `stable` seconds."""

    base: float = RESTART_BASE_SECONDS
    cap: float = RESTART_MAX_SECONDS
    stable: float = STABLE_SECONDS
    crashes: int = 0

    def after_crash(self, uptime: float) -> float:
        if uptime >= self.stable:
            self.crashes = 0
        delay = min(self.cap, self.base * 2.0 ** min(self.crashes, 64))
        self.crashes += 1
        return delay


@dataclass
class Worker:
    process: BaseProcess
    # Open until the worker has said it is ready (or exited without saying so).
    ready_channel: Connection | None
    started: float = field(default_factory=time.monotonic)
    ready: bool = False

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def note_ready(self) -> bool:
        """True once the worker has said it serves; reads its channel if there is news."""
        channel = self.ready_channel
        if channel is not None and channel.poll():
            with contextlib.suppress(EOFError):  # exited before it was ready
                self.ready = channel.recv_bytes() == READY
            channel.close()
            self.ready_channel = None
        return self.ready


@dataclass
class Slot:
    """One worker's place: its socket, its worker, and during a rolling restart the worker that
    replaces it (`successor`) or the one being stopped (`retiring`)."""

    index: int
    sock: socket.socket | None = None
    worker: Worker | None = None
    successor: Worker | None = None
    retiring: Worker | None = None
    retire_deadline: float = 0.0
    restart_at: float | None = None
    backoff: Backoff = field(default_factory=Backoff)


class Supervisor:
    """Owns the worker processes and their sockets; runs until SIGTERM or SIGINT."""

    def __init__(
        self, target: WorkerTarget, args: tuple[Any, ...], *, host: str, port: int, workers: int, backlog: int
    ) -> None:
        self.target = target
        self.args = args
        self.host = host
        self.port = port
        self.backlog = backlog
        self.slots = [Slot(i) for i in range(workers)]
        self.context = multiprocessing.get_context("spawn")  # a fresh interpreter: new code on reload
        self.to_roll: deque[Slot] = deque()
        self.stopping = False
        self.reload_requested = False
        self.rolling = False
        self.wakeup_read, self.wakeup_write = socket.socketpair()

    # Signals only set flags; the wakeup socket ends the wait so the loop acts on them at once.
    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True

    def run(self) -> None:
        self.wakeup_write.setblocking(False)
        signal.set_wakeup_fd(self.wakeup_write.fileno())
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        for slot in self.slots:
            self._restart(slot)
        log.info("%d workers on %s:%d", len(self.slots), self.host, self.port)
        try:
            while not self.stopping:
                self._wait()
                self._step()
        finally:
            self._stop_all()

    def _wait(self) -> None:
        channels: list[Any] = [self.wakeup_read]
        deadlines: list[float] = []
        for slot in self.slots:
            for worker in (slot.worker, slot.successor, slot.retiring):
                if worker is not None:
                    channels.append(worker.process.sentinel)
                    if worker.ready_channel is not None:
                        channels.append(worker.ready_channel)
            if slot.restart_at is not None:
                deadlines.append(slot.restart_at)
            if slot.retiring is not None:
                deadlines.append(slot.retire_deadline)
            if slot.successor is not None:
                deadlines.append(slot.successor.started + READY_TIMEOUT)
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        for ready in multiprocessing.connection.wait(channels, timeout):
            if ready is self.wakeup_read:
                self.wakeup_read.recv(4096)

    def _step(self) -> None:
        if self.reload_requested:
            self.reload_requested = False
            log.info("rolling restart: begin (pids %s)", [s.worker.pid for s in self.slots if s.worker])
            self.to_roll = deque(self.slots)
            self.rolling = True
        now = time.monotonic()
        for slot in self.slots:
            self._check_retiring(slot, now)
            self._check_successor(slot, now)
            self._check_worker(slot, now)
            if slot.restart_at is not None and now >= slot.restart_at:
                self._restart(slot)
        self._roll_next()

    def _check_worker(self, slot: Slot, now: float) -> None:
        worker = slot.worker
        if worker is None:
            return
        if not worker.ready and worker.note_ready():
            log.info("worker %d pid %d ready", slot.index, worker.pid)
        if worker.process.is_alive():
            return
        slot.worker = None
        uptime = now - worker.started
        if slot.successor is not None:  # it was about to be replaced anyway
            log.warning("worker %d pid %d exited with %s", slot.index, worker.pid, worker.process.exitcode)
            return
        delay = slot.backoff.after_crash(uptime)
        log.warning(
            "worker %d pid %d exited with %s after %.1f s; restart %d in %.2f s",
            slot.index, worker.pid, worker.process.exitcode, uptime, slot.backoff.crashes, delay,
        )  # fmt: skip
        # Nobody accepts on this socket until the restart: close it so new connections go elsewhere.
        _close(slot)
        slot.restart_at = now + delay

    def _check_successor(self, slot: Slot, now: float) -> None:
        successor = slot.successor
        if successor is None:
            return
        if successor.note_ready():
            log.info("worker %d pid %d ready", slot.index, successor.pid)
            slot.successor = None
            old, slot.worker = slot.worker, successor
            if old is not None:
                log.info("worker %d pid %d stopping (replaced by pid %d)", slot.index, old.pid, successor.pid)
                _terminate(old)
                slot.retiring = old
                slot.retire_deadline = now + RETIRE_TIMEOUT
        elif not successor.process.is_alive() or now >= successor.started + READY_TIMEOUT:
            log.error(
                "rolling restart: aborted: worker %d's new pid %d did not become ready (exit code %s);"
                " the old worker keeps serving",
                slot.index, successor.pid, successor.process.exitcode,
            )  # fmt: skip
            slot.successor = None
            self.to_roll.clear()
            self.rolling = False
            _kill(successor)
            if slot.worker is None:  # the old one crashed meanwhile: restart as after any crash
                slot.restart_at = now + slot.backoff.after_crash(0.0)

    def _check_retiring(self, slot: Slot, now: float) -> None:
        retiring = slot.retiring
        if retiring is None:
            return
        if retiring.process.is_alive() and now < slot.retire_deadline:
            return
        if retiring.process.is_alive():
            log.warning("worker %d pid %d did not stop; killing it", slot.index, retiring.pid)
        _kill(retiring)
        log.info("worker %d pid %d stopped", slot.index, retiring.pid)
        slot.retiring = None

    def _roll_next(self) -> None:
        """Start replacing the next slot once no other slot is being replaced."""
        if any(s.successor or s.retiring for s in self.slots):
            return
        while self.to_roll:
            slot = self.to_roll.popleft()
            if slot.worker is None:  # crashed and waiting for its restart: that is new code already
                continue
            assert slot.sock is not None
            slot.successor = self._spawn(slot, slot.sock)
            return
        if self.rolling:
            self.rolling = False
            log.info("rolling restart: done (pids %s)", [s.worker.pid for s in self.slots if s.worker])

    def _restart(self, slot: Slot) -> None:
        slot.restart_at = None
        if slot.sock is None:
            slot.sock = self._listen()
        slot.worker = self._spawn(slot, slot.sock)

    def _spawn(self, slot: Slot, sock: socket.socket) -> Worker:
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(target=self.target, args=(writer, sock, *self.args), daemon=False)
        process.start()
        writer.close()  # the child holds the other end: its exit shows here as end-of-file
        worker = Worker(process, reader)
        log.info("worker %d pid %d started", slot.index, worker.pid)
        return worker

    def _listen(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            return socket.create_server(
                (self.host, self.port), family=family, backlog=self.backlog, reuse_port=True
            )
        except OSError as exc:
            raise SystemExit(f"cannot listen on {self.host}:{self.port}: {exc}") from exc

    def _stop_all(self) -> None:
        workers = [w for s in self.slots for w in (s.worker, s.successor, s.retiring) if w is not None]
        for worker in workers:
            _terminate(worker)
        for worker in workers:
            worker.process.join(RETIRE_TIMEOUT)
            if worker.process.is_alive():  # a worker stuck in shutdown must not keep us alive
                log.warning("worker pid %d did not stop; killing it", worker.pid)
            _kill(worker)
        for slot in self.slots:
            _close(slot)


def _terminate(worker: Worker) -> None:
    if worker.process.is_alive():
        os.kill(worker.pid, signal.SIGTERM)


def _kill(worker: Worker) -> None:
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join()
    if worker.ready_channel is not None:
        worker.ready_channel.close()


def _close(slot: Slot) -> None:
    if slot.sock is not None:
        slot.sock.close()
        slot.sock = None


def tell_ready(channel: Connection) -> None:
    """In a worker: tell the supervisor this worker now serves."""
    channel.send_bytes(READY)
    channel.close()
