"""Running the app as a process: event loop, file limits, signals."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
from datetime import UTC, datetime

import uvloop
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from . import jsonutil
from .app import create_app
from .metrics import UNMATCHED
from .proxies import client_address_key
from .settings import Settings

log = logging.getLogger(__name__)

# Reconnect storms after a deploy arrive all at once; the kernel caps this at somaxconn.
LISTEN_BACKLOG = 4096
# Streams are ended from on_shutdown, so handlers finish well within this.
SHUTDOWN_TIMEOUT = 5.0
# Allocations before a young collection, and how often the older generations are walked.
GC_THRESHOLDS = (50_000, 20, 100)


class AccessLogger(AbstractAccessLogger):
    """One JSON object per request, with only what is safe to keep: never the query string
    (tokens, usernames), headers (cookies, Authorization) or bodies (passwords). Paths are
    logged for matched routes only, whose paths hold nothing but ids and file names."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        entry: dict[str, object] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            # Behind a trusted proxy, the client's address (the handlers saw a clone that had it).
            "remote": request.get(client_address_key, request.remote),
            "method": request.method,
            "route": UNMATCHED,
            "status": response.status,
            "seconds": round(time, 4),
            "bytes": response.body_length,
        }
        resource = request.match_info.route.resource if isinstance(request, web.Request) else None
        if resource is not None:
            entry["route"] = resource.canonical
            entry["path"] = request.path
        self.logger.info("%s", jsonutil.dumps(entry).decode())


def configure_access_log() -> None:
    """Access lines are whole JSON objects, one per line, without the usual log prefix."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("aiohttp.access")
    access.handlers[:] = [handler]
    access.setLevel(logging.INFO)
    access.propagate = False


def raise_open_file_limit() -> int:
    """Each stream is a socket: raise the soft limit on open files to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def serve(settings: Settings, *, host: str, port: int, workers: int = 1) -> None:
    """Serve in this process, or in `workers` processes sharing the port (SO_REUSEPORT)."""
    if workers > 1:
        if not settings.redis_url:
            raise SystemExit("--workers above 1 needs REDIS_URL: workers share their streams through Redis")
        _supervise(settings, host=host, port=port, workers=workers)
    else:
        _serve_one(settings, host=host, port=port, reuse_port=False)


def _serve_one(settings: Settings, *, host: str, port: int, reuse_port: bool) -> None:
    configure_access_log()
    # Thousands of open streams are hundreds of thousands of long-lived objects: with the
    # default thresholds the collector keeps walking them, and a walk in the middle of a
    # fan-out delays it (measured: p99 delivery to 10,000 streams 313 ms -> 122 ms).
    gc.set_threshold(*GC_THRESHOLDS)
    limit = raise_open_file_limit()
    log.info("pid %d: open-file limit %d, room for about %d streams", os.getpid(), limit, limit - 100)
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        reuse_port=reuse_port,
        # Cancel a handler as soon as its client goes away: the same as under test.
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        backlog=LISTEN_BACKLOG,
        loop=uvloop.new_event_loop(),
        access_log_class=AccessLogger,
    )


def _supervise(settings: Settings, *, host: str, port: int, workers: int) -> None:
    """Run the workers; start a new one in place of any that dies, until told to stop."""
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker_main, args=(settings, host, port), daemon=False)
        process.start()
        return process

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    running = [start() for _ in range(workers)]
    log.info("%d workers on %s:%d: %s", workers, host, port, [p.pid for p in running])
    while not stopping:
        multiprocessing.connection.wait([p.sentinel for p in running], timeout=1.0)
        for i, process in enumerate(running):
            if not process.is_alive() and not stopping:
                log.warning("worker %s exited with %s; starting another", process.pid, process.exitcode)
                running[i] = start()
    for process in running:
        if process.pid is not None and process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    for process in running:
        process.join(SHUTDOWN_TIMEOUT * 3)
        if process.is_alive():  # a worker stuck in shutdown must not keep the supervisor alive
            log.warning("worker %s did not stop; killing it", process.pid)
            process.kill()
            process.join()


def _worker_main(settings: Settings, host: str, port: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _serve_one(settings, host=host, port=port, reuse_port=True)
