"""Running the app as a process: event loop, file limits, signals."""

from __future__ import annotations

import logging
import resource

import uvloop
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .app import create_app
from .settings import Settings

log = logging.getLogger(__name__)

# Reconnect storms after a deploy arrive all at once; the kernel caps this at somaxconn.
LISTEN_BACKLOG = 4096
# Streams are ended from on_shutdown, so handlers finish well within this.
SHUTDOWN_TIMEOUT = 5.0


class AccessLogger(AbstractAccessLogger):
    """Method and path only: query strings may carry tokens and usernames."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %s %.3fs", request.remote, request.method, request.path, response.status, time
        )


def raise_open_file_limit() -> int:
    """Each stream is a socket: raise the soft limit on open files to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def serve(settings: Settings, *, host: str, port: int) -> None:
    limit = raise_open_file_limit()
    log.info("open-file limit %d: room for about %d streams", limit, limit - 100)
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        # Cancel a handler as soon as its client goes away: the same as under test.
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        backlog=LISTEN_BACKLOG,
        loop=uvloop.new_event_loop(),
        access_log_class=AccessLogger,
    )
