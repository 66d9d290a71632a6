"""Running the app as a process: event loop, file limits, signals."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import resource
import signal
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger

from . import jsonutil
from .app import create_app
from .eventloop import new_event_loop
from .hub import hub_key
from .metrics import UNMATCHED
from .proxies import client_address_key
from .settings import Settings
from .supervisor import Supervisor, tell_ready

log = logging.getLogger(__name__)

# Reconnect storms after a deploy arrive all at once; the kernel caps this at somaxconn.
LISTEN_BACKLOG = 4096
# Streams are ended from on_shutdown, so handlers finish well within this.
SHUTDOWN_TIMEOUT = 5.0
# A stopping worker waits at most this long for its keep-alive clients to close their idle
# connections; above the upstream keepalive_timeout of deploy/nginx/chat.conf.template (1 s).
DRAIN_SECONDS = 3.0
DRAIN_CHECK = 0.05
# Allocations before a young collection; young collections before a middle one (which walks
# every survivor since the last: kept to 2, so it walks at most about 100,000 objects); middle
# collections before the oldest generation is considered (CPython also waits until it grew by
# a quarter).
GC_THRESHOLDS = (50_000, 2, 1000)
# Access lines wait at most this long to leave together, in one write().
ACCESS_FLUSH_SECONDS = 0.1


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


class BufferedLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler whose lines leave together: the first line emitted in the event loop
    schedules a flush `delay` seconds later, which writes every line waiting in one write().
    A write() per line was 7 % of the server's CPU per post at 200 posts/s (docs/scaling.md).

    Why not the stdlib's: MemoryHandler hands its target the records one by one on flush (a
    write() each again) and flushes only when full or on a severe record (lines would wait
    indefinitely at low traffic); QueueHandler moves the same write() per line to a thread.

    A line emitted outside a running loop is written at once. `flush()` (the end of `_serve`,
    and `logging.shutdown()` at exit) writes what waits: a clean stop loses none; a killed
    process loses at most `delay` seconds of lines."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self._lines: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_later(self.delay, self._flush_due)

    def _flush_due(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            lines, self._lines = self._lines, []
            if lines:
                self.stream.write("".join(lines))
        finally:
            self.release()
        super().flush()


def configure_access_log() -> logging.Handler:
    """Access lines are whole JSON objects, one per line, without the usual log prefix."""
    handler = BufferedLineHandler(ACCESS_FLUSH_SECONDS)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("aiohttp.access")
    access.handlers[:] = [handler]
    access.setLevel(logging.INFO)
    access.propagate = False
    # A record per request: skip finding what no format here shows (the Logging HOWTO's
    # "Optimization"): the calling frame, thread, process name and pid (getpid() is a system
    # call). Two thirds of a line's cost.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return handler


def raise_open_file_limit() -> int:
    """Each stream is a socket: raise the soft limit on open files to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def serve(settings: Settings, *, host: str, port: int, workers: int = 1) -> None:
    """Serve in this process, or in `workers` supervised processes sharing the port."""
    if workers > 1:
        if not settings.redis_url:
            raise SystemExit("--workers above 1 needs REDIS_URL: workers share their streams through Redis")
        supervisor = Supervisor(
            _worker_main, (settings,), host=host, port=port, workers=workers, backlog=LISTEN_BACKLOG
        )
        supervisor.run()
    else:
        _serve_one(settings, host=host, port=port)


def _serve_one(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    sock: socket.socket | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve on host:port, or as a supervised worker on the slot's socket (then on_ready once
    serving, and a drain of keep-alive connections before stopping); until SIGTERM or SIGINT."""
    access_lines = configure_access_log()
    # Thousands of open streams are hundreds of thousands of long-lived objects: with the
    # default thresholds the collector keeps walking them, and a walk in the middle of a
    # fan-out delays it (measured: p99 delivery to 10,000 streams 313 ms -> 122 ms). A middle
    # generation of 20 young collections held a whole connect burst: its one collection walked
    # 640,000 objects in 305 ms (gc.callbacks), in a fan-out (fan-out C p99 390-436 ms -> 170 ms).
    gc.set_threshold(*GC_THRESHOLDS)
    limit = raise_open_file_limit()
    log.info("pid %d: open-file limit %d, room for about %d streams", os.getpid(), limit, limit - 100)
    app = create_app(settings)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            if sock is None:
                runner.run(_serve(app, lambda r: web.TCPSite(r, host, port, backlog=LISTEN_BACKLOG)))
            else:
                # The backlog again: asyncio calls listen() on the socket with it (128 if not given).
                site = functools.partial(web.SockSite, sock=sock, backlog=LISTEN_BACKLOG)
                runner.run(_serve(app, site, on_ready=on_ready, drain=DRAIN_SECONDS))
    finally:
        access_lines.flush()  # the lines of the last responses, whose flush the loop did not run


async def _serve(
    app: web.Application,
    make_site: Callable[[web.AppRunner], web.BaseSite],
    *,
    on_ready: Callable[[], None] | None = None,
    drain: float = 0.0,
) -> None:
    """web.run_app's steps, with a drain between "stop accepting" and "close everything"."""
    draining = asyncio.Event()

    async def close_after_response(request: web.Request, response: web.StreamResponse) -> None:
        if draining.is_set():
            # aiohttp has built the headers by now: say "close" as well as doing it, or a proxy
            # sends its next request on a connection that is about to close.
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"

    app.on_response_prepare.append(close_after_response)
    runner = web.AppRunner(
        app,
        # Cancel a handler as soon as its client goes away: the same as under test.
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        access_log_class=AccessLogger,
    )
    await runner.setup()
    try:
        site = make_site(runner)
        await site.start()
        if on_ready is None:
            print(f"chat_server on {site.name}", flush=True)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _no_reload)
        else:
            on_ready()
        await _signalled(signal.SIGTERM, signal.SIGINT)
        await site.stop()
        draining.set()  # before the streams end: their last bytes must not invite a new request
        await _drain(runner, app, drain)
    finally:
        await runner.cleanup()


def _no_reload() -> None:
    # `systemctl reload` on a single process: restarting it would drop every stream at once.
    log.warning("SIGHUP ignored: a rolling restart needs --workers 2 or more (CHAT_WORKERS)")


async def _signalled(*signals: signal.Signals) -> None:
    received = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in signals:
        loop.add_signal_handler(signum, received.set)
    await received.wait()


async def _drain(runner: web.AppRunner, app: web.Application, seconds: float) -> None:
    """End the streams, then wait up to `seconds` until every other connection has closed.

    Closing an idle keep-alive connection races with a proxy sending its next request on it
    (nginx answers that POST with 502, and cannot retry it elsewhere), and an ended stream's
    connection is such an idle connection. So while draining this worker still serves, each
    response says "Connection: close", and idle connections are left for the proxy to close
    (the deploy site's upstream keepalive_timeout is below DRAIN_SECONDS). A stream opened
    meanwhile is served too (with "Connection: close"), and ended by cleanup.
    """
    app[hub_key].end_streams()  # each EventSource resumes on another worker at once
    server = runner.server
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    # aiohttp has no event for "a connection closed": look every DRAIN_CHECK seconds (first after
    # one, so that the ended streams' handlers have returned).
    while loop.time() < deadline:
        await asyncio.sleep(DRAIN_CHECK)
        if server is None or len(server.connections) <= app[hub_key].subscriber_count:
            return


def _worker_main(ready: Connection, sock: socket.socket, settings: Settings) -> None:
    """A supervised worker (a fresh interpreter): serve on the slot's socket, then say so."""
    # SIGHUP is the supervisor's (a rolling restart); a hangup sent to the whole process group
    # (a closed terminal) must not take every worker down at once.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _serve_one(settings, sock=sock, on_ready=lambda: tell_ready(ready))
