"""Message announcements on a Redis connection of their own, with replies turned off.

Every stored message is published once. Through the shared client a publish borrowed a pooled
connection, yielded before it wrote (redis-py bounds the write with a task of its own), and then
waited for, woke up for and parsed an integer nobody reads: a tenth of a worker's busy time in
the 2-worker chats scenario. Here the connection has `CLIENT REPLY OFF`, so a publish is one
write in the caller's own loop turn: the other processes are told before this one writes its
own streams, and nothing comes back on this connection.

Redis's acknowledgement is the announcement itself: this process is subscribed to the channel,
and Redis sends a publisher's messages to each subscriber in the order it received them. So
`heard_back()` takes the oldest outstanding send, and one not heard back within the bound means
announcements may have been lost: the broker degrades, as it does when a publish fails. (Lost
announcements only delay messages: the database follower finds them; see catchup.py.)

A Redis that refuses `CLIENT REPLY` (an ACL without it) would answer every publish all the same,
into a socket nobody reads: that is checked when connecting, and such a Redis gets its
announcements through the shared client, answered, as any other command.

Invariant: `_unheard` holds the send times of this connection's publishes not heard back since
the last `forget()`, oldest first. So each one heard back times Redis's hop for free: from the
send to this process reading it back (`round_trip`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import redis.asyncio as redis
from redis.asyncio.connection import AbstractConnection

from .histogram import Histogram

log = logging.getLogger(__name__)


class Announcer:
    def __init__(self, client: redis.Redis, channel: str, name: str) -> None:
        pool = client.connection_pool
        # No socket timeout: with one, redis-py writes from a task of its own, a loop turn later.
        # The caller bounds the call instead (redis_policy.bounded). Named in CLIENT LIST.
        self._kwargs = {**pool.connection_kwargs, "socket_timeout": None, "client_name": name}
        self._client = client
        self._answered = False  # this Redis refuses CLIENT REPLY: publish through the client
        self._connection_class = pool.connection_class
        self.channel = channel
        self._connection: AbstractConnection | None = None
        self._connecting = asyncio.Lock()  # the first publishes of a burst share one connection
        self._unheard: deque[float] = deque()
        # Seconds from a publish to hearing it back. Timed with time.monotonic(), not the loop's
        # clock: uvloop's counts whole milliseconds, once per loop turn.
        self.round_trip = Histogram()

    async def publish(self, data: bytes) -> None:
        """Sent when this returns (raises a redis_policy failure if it could not be written)."""
        connection = self._connection
        if connection is None or not connection.is_connected:
            connection = await self.connect()
            if connection is None:  # this Redis refuses CLIENT REPLY: an answered publish
                await self._client.publish(self.channel, data)
                return
        try:
            await connection.send_packed_command(
                connection.pack_command("PUBLISH", self.channel, data), check_health=False
            )
        except RuntimeError as exc:  # uvloop's answer to a write on a transport closed under it
            await self.close()
            raise redis.ConnectionError(f"announcer connection closed: {exc}") from exc
        except BaseException:
            self._connection = None  # redis-py closed it; the next publish connects again
            raise
        self._unheard.append(time.monotonic())

    async def connect(self) -> AbstractConnection | None:
        """The connection, connected if it was not; None if this Redis refuses CLIENT REPLY."""
        async with self._connecting:
            if not self._answered and (self._connection is None or not self._connection.is_connected):
                self._connection = await self._connect()
            return self._connection

    async def _connect(self) -> AbstractConnection | None:
        connection = self._connection_class(**self._kwargs)
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
            # OFF has no answer and ON answers OK: one OK proves that OFF was taken (a refused
            # OFF answers an error first). Then replies are off from here on; a reconnect
            # (ours, never redis-py's) says so again.
            off, on = ("CLIENT", "REPLY", "OFF"), ("CLIENT", "REPLY", "ON")
            await connection.send_packed_command(connection.pack_commands([off, on]), check_health=False)
            await connection.read_response()
            await connection.send_packed_command(connection.pack_command(*off), check_health=False)
        except redis.ResponseError as exc:
            await connection.disconnect(nowait=True)
            log.warning("redis refuses CLIENT REPLY (%s): announcements are answered publishes", exc)
            self._answered = True
            return None
        except BaseException:
            await connection.disconnect(nowait=True)  # cut off by the caller's bound
            raise
        return connection

    def heard_back(self) -> None:
        """One of this process's announcements came back on its subscription."""
        if self._unheard:
            self.round_trip.observe(time.monotonic() - self._unheard.popleft())

    def overdue(self, bound: float) -> bool:
        """Whether an announcement has not come back for longer than `bound` seconds."""
        return bool(self._unheard) and time.monotonic() - self._unheard[0] > bound

    def forget(self) -> None:
        """Announcements sent so far no longer matter (every stream resumes from the database)."""
        self._unheard.clear()

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.disconnect()
            self._connection = None
