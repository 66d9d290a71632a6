"""One policy for every Redis call (broker, presence, limits): how the client is built, how long a
call may take, what counts as Redis failing, and when to ask again after a failure.

A Redis that stops answering (a network stall) is not a refused connection: redis-py's socket
timeout per attempt, times its retries, would hold a request for many seconds. Every call is
bounded by `bounded()` instead, and its failure is handled where the call is made: limits and
presence fail open (this process's own counts decide: a stream or a post never waits on
Redis), the broker degrades to delivering from the database (its publishes get a longer bound,
`broker.PUBLISH_TIMEOUT`, since giving one up degrades every process).
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

log = logging.getLogger(__name__)

# A Redis nearby answers in a millisecond or so: one that has not answered in this long is not
# answering. (A call that retries within the bound still counts as one call.)
CALL_TIMEOUT = 0.5
# After a failure, callers that can do without Redis ask it again only after this long, so that
# meanwhile no request waits on it.
RETRY_PAUSE = 1.0
# Connections per process at most in the shared pool (the subscription's included; message
# announcements have one of their own, outside it: announcer.py).
MAX_CONNECTIONS = 8
# What a Redis call raises when Redis is down, refuses, or does not answer in time.
FAILURES = (RedisError, OSError, TimeoutError)


def connect(url: str) -> redis.Redis:
    """The client every user of Redis shares. `from_url` would not retry at all by default
    (shared PITFALLS 3.6): a dropped connection is retried twice, quickly, within the bound.
    The pool is bounded and callers wait for a free connection (within their bound): a burst
    of a thousand publishes otherwise opened a connection each, with a HELLO each, and held
    them all open afterwards. One of them is the subscription's, held for good."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=None,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2),
        socket_timeout=5,
        socket_connect_timeout=2,
    )
    return redis.Redis.from_pool(pool)


def bounded(seconds: float = CALL_TIMEOUT) -> asyncio.Timeout:
    """`async with bounded():` around a Redis call (or one pipeline)."""
    return asyncio.timeout(seconds)


class RedisGuard:
    """Whether to ask Redis now (not for RETRY_PAUSE after a failure); logs when it goes away
    and when it answers again."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failing = False
        self._paused_until = 0.0

    def ready(self) -> bool:
        return time.monotonic() >= self._paused_until

    def failed(self, exc: BaseException) -> None:
        if not self.failing:
            log.warning("%s: redis unreachable (%r); counting in this process", self.what, exc)
        self.failing = True
        self._paused_until = time.monotonic() + RETRY_PAUSE

    def succeeded(self) -> None:
        if self.failing:
            log.info("%s: redis answers again", self.what)
        self.failing = False
