"""Announcing inserts and chat events to every process: in-process, or through Redis.

Without REDIS_URL the `LocalBroker` feeds this process's hub directly. With it, the
`RedisBroker` publishes every announcement on one channel and applies what it receives, its
own included, so all processes see the same order (which the sequencer relies on); one
subscription per process, not per stream. Redis pub/sub is at-most-once, so the database
stays the source of truth: whenever announcements may have been missed (Redis down, a publish
failed, the channel went silent), every process ends its streams and their EventSources
resume from the database by Last-Event-ID.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import redis.asyncio as redis
from aiohttp import web
from redis.exceptions import RedisError

from . import jsonutil, redis_policy
from .catchup import DatabaseFollower
from .errors import Unavailable
from .hub import Hub
from .models import Chat, Message
from .store import Store

log = logging.getLogger(__name__)

# A publish that takes longer than this fails over to local delivery: posts must not hang on Redis.
PUBLISH_TIMEOUT = 1.0
# Every process says it is alive this often; a channel silent for 3x this is treated as broken
# (health checks do not notice a stalled connection).
HEARTBEAT_SECONDS = 2.0
RECONNECT_DELAY = 0.5
STARTUP_WAIT = 3.0

Release = Callable[[Message], None]


class Broker(abc.ABC):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.process_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._tokens = itertools.count()
        # Told the keys of login sessions that ended on any process (None: any may have, forget
        # them all); the sessions module registers here.
        self.session_listeners: list[Callable[[list[str] | None], None]] = []

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    async def ping(self) -> None:  # noqa: B027 - nothing to ask in-process
        pass

    @abc.abstractmethod
    def insert(self) -> contextlib.AbstractAsyncContextManager[Release]:
        """Run one message INSERT inside this block and pass the message to what it yields."""

    @abc.abstractmethod
    async def chat_created(self, chat: Chat) -> None: ...

    @abc.abstractmethod
    async def presence_changed(self, change: dict[str, Any], user_ids: list[int] | None) -> None:
        """Tell the per-user streams of `user_ids` (None: everyone's) on every process."""

    @abc.abstractmethod
    async def chat_read(self, user_id: int, marker: dict[str, Any], partners: list[int]) -> None: ...

    @abc.abstractmethod
    async def typing(self, typing: dict[str, Any], user_ids: list[int]) -> None: ...

    @abc.abstractmethod
    async def sessions_ended(self, keys: list[str]) -> None:
        """Login sessions ended: every process forgets them and closes their streams."""

    def _sessions_ended(self, keys: list[str] | None) -> None:
        for listener in self.session_listeners:
            listener(keys)

    def _new_token(self) -> str:
        return f"{self.process_id}:{next(self._tokens)}"

    @asynccontextmanager
    async def _local_insert(self, token: str) -> AsyncIterator[Release]:
        result: list[Message] = []
        self.hub.sequencer.start(token)
        try:
            yield result.append
        finally:
            self.hub.sequencer.done(token, result[0] if result else None)


class LocalBroker(Broker):
    """One process: announcements go straight to the hub."""

    def insert(self) -> contextlib.AbstractAsyncContextManager[Release]:
        return self._local_insert(self._new_token())

    async def chat_created(self, chat: Chat) -> None:
        self.hub.chat_created(chat.to_json())

    async def presence_changed(self, change: dict[str, Any], user_ids: list[int] | None) -> None:
        self.hub.presence(change, user_ids)

    async def chat_read(self, user_id: int, marker: dict[str, Any], partners: list[int]) -> None:
        self.hub.chat_read(user_id, marker, partners)

    async def typing(self, typing: dict[str, Any], user_ids: list[int]) -> None:
        self.hub.typing(typing, user_ids)

    async def sessions_ended(self, keys: list[str]) -> None:
        self._sessions_ended(keys)


class RedisBroker(Broker):
    """Announcements through one Redis channel; the database follower while Redis is away.

    Healthy: inserts are announced on the channel and every process applies what it hears.
    Degraded (the subscription broke, or a publish failed): announcements are ignored and the
    process delivers what it reads from the database, in id order (`DatabaseFollower`), while
    it keeps trying to tell every process to resync. On `resync` (or on resubscribing), each
    process ends its streams, which resume from the database, and is healthy again.
    """

    def __init__(self, hub: Hub, store: Store, url: str, channel: str) -> None:
        super().__init__(hub)
        self.store = store
        self.channel = channel
        self.redis = redis_policy.connect(url)
        self.healthy = False
        self.resyncs = 0
        self._follower = DatabaseFollower(hub, store)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        subscribed = asyncio.Event()
        self._spawn("reader", self._read_forever(subscribed))
        self._spawn("heartbeat", self._heartbeat_forever())
        # Our own announcements must come back to us before we post. If Redis is down, start
        # degraded: the database follower delivers, and the reader resyncs once Redis answers.
        try:
            async with asyncio.timeout(STARTUP_WAIT):
                await subscribed.wait()
        except TimeoutError:
            self._degrade("redis unreachable at start-up")

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.redis.aclose()

    async def ping(self) -> None:
        await self.redis.ping()

    def _spawn(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        running = self._tasks.get(name)
        if running is None or running.done():
            self._tasks[name] = asyncio.create_task(work, name=f"redis-{name}")
        else:
            work.close()

    def _stop(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    def _degrade(self, reason: str) -> None:
        if self.healthy:
            log.warning("redis fan-out degraded (%s): delivering from the database", reason)
        self.healthy = False
        self._spawn("follower", self._follower.run())
        self._spawn("resync", self._announce_resync())

    # -- publishing --------------------------------------------------------------

    @asynccontextmanager
    async def insert(self) -> AsyncIterator[Release]:
        token = self._new_token()
        if not self.healthy or not await self._publish({"type": "start", "token": token}):
            yield _ignore  # the database follower delivers it
            return
        result: list[Message] = []
        try:
            yield result.append
        finally:
            message = result[0] if result else None
            await self._publish(
                {"type": "done", "token": token, "message": message.announcement() if message else None}
            )

    async def chat_created(self, chat: Chat) -> None:
        data = chat.to_json()
        if not await self._publish({"type": "chat", "chat": data}):
            self.hub.chat_created(data)

    async def presence_changed(self, change: dict[str, Any], user_ids: list[int] | None) -> None:
        if not await self._publish({"type": "presence", "change": change, "users": user_ids}):
            self.hub.presence(change, user_ids)

    async def chat_read(self, user_id: int, marker: dict[str, Any], partners: list[int]) -> None:
        event = {"type": "read", "user_id": user_id, "marker": marker, "partners": partners}
        if not await self._publish(event):
            self.hub.chat_read(user_id, marker, partners)

    async def typing(self, typing: dict[str, Any], user_ids: list[int]) -> None:
        if not await self._publish({"type": "typing", "typing": typing, "users": user_ids}):
            self.hub.typing(typing, user_ids)

    async def sessions_ended(self, keys: list[str]) -> None:
        if not await self._publish({"type": "sessions_ended", "keys": keys}):
            self._sessions_ended(keys)

    async def _publish(self, event: dict[str, Any]) -> bool:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await self.redis.publish(self.channel, jsonutil.dumps(event))
            return True
        except (RedisError, OSError, TimeoutError) as exc:
            self._degrade(f"publish failed: {exc}")
            return False

    async def _announce_resync(self) -> None:
        """Once Redis answers again, tell every process (this one included) to resync."""
        while True:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(PUBLISH_TIMEOUT):
                    await self.redis.publish(self.channel, b'{"type":"resync"}')
                return
            await asyncio.sleep(RECONNECT_DELAY)

    async def _heartbeat_forever(self) -> None:
        while True:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(PUBLISH_TIMEOUT):
                    await self.redis.publish(self.channel, b'{"type":"hb"}')
            await asyncio.sleep(HEARTBEAT_SECONDS)

    # -- receiving ---------------------------------------------------------------

    async def _read_forever(self, subscribed: asyncio.Event) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                await self._resync()
                subscribed.set()
                await self._read(pubsub)
            except (RedisError, OSError, TimeoutError) as exc:
                self._degrade(f"subscription lost: {exc}")
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(RECONNECT_DELAY)

    async def _read(self, pubsub: redis.client.PubSub) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            item = await pubsub.get_message(timeout=1.0)
            self.hub.sequencer.expire()
            if item is not None:
                heard = loop.time()
                await self._apply(jsonutil.loads(item["data"]))
            elif loop.time() - heard > 3 * HEARTBEAT_SECONDS:
                raise TimeoutError("no heartbeat on the redis channel")

    async def _apply(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "chat":
            self.hub.chat_created(event["chat"])
        elif kind == "presence":
            # A process of the previous version names chats, not users: tell no one (a rolling restart).
            self.hub.presence(event["change"], event.get("users", ()))
        elif kind == "read":
            # No "partners" from a process of the previous version (a rolling restart).
            self.hub.chat_read(event["user_id"], event["marker"], event.get("partners", ()))
        elif kind == "typing":
            self.hub.typing(event["typing"], event["users"])
        elif kind == "sessions_ended":
            self._sessions_ended(event["keys"])
        elif kind == "resync":
            await self._resync()
        elif not self.healthy:
            return  # the database follower is delivering, in its own order
        elif kind == "start":
            self.hub.sequencer.start(event["token"])
        elif kind == "done":
            data = event["message"]
            message = Message.from_json(data) if data else None
            if message is not None and data is not None and "members" not in data:
                # From a process of the previous version (a rolling restart): the DM's members,
                # which route it to per-user streams, come from the chat cache instead.
                members: dict[int, tuple[int, ...]] = {}
                with contextlib.suppress(Unavailable):  # then per-chat streams still get it
                    members = await self.store.members_of([message.chat_id])
                message = replace(message, members=members.get(message.chat_id, ()))
            self.hub.sequencer.done(event["token"], message)

    async def _resync(self) -> None:
        """Announcements may have been missed: every stream resumes from the database."""
        self.resyncs += 1
        released = self.hub.released_id
        with contextlib.suppress(Unavailable):
            released = max(released, await self.store.latest_message_id())
        self.hub.sequencer.reset(released)
        self.hub.end_streams()
        self._sessions_ended(None)  # an ending may have been missed: sessions are read again
        self._stop("follower")
        self.healthy = True


def _ignore(message: Message) -> None:
    pass


def channel_for(database_url: str) -> str:
    """Processes that share a database share a channel; others on the same Redis do not."""
    return "chat_server:" + database_url.rsplit("@", 1)[-1]


broker_key = web.AppKey("broker", Broker)
