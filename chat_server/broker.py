"""Announcing stored messages and chat events to every process: in-process, or through Redis.

Without REDIS_URL the `LocalBroker` feeds this process's hub directly. With it, the
`RedisBroker` also publishes every announcement on one channel and applies what it receives;
one subscription per process, not per stream. Announcements are only the fast path: order and
completeness come from the sequencer's watermark and the database follower (see catchup.py),
so an announcement lost to Redis (down, flapping, slow) delays a message but never loses or
reorders it. When Redis comes back every process ends its streams, whose EventSources resume by
Last-Event-ID, so that chats made and presence changed meanwhile are read again.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import redis.asyncio as redis
from aiohttp import web

from . import jsonutil, redis_policy
from .announcer import Announcer
from .catchup import DatabaseFollower
from .errors import Unavailable
from .hub import Hub
from .keeper import Keeper
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
STARTUP_WINDOW = 20_000
STARTUP_SETTLE_ATTEMPTS = 3
# Presence changes per announcement at most (about 100 bytes each). A process of the previous
# version ignores these announcements during a rolling restart: presence is best effort, and its
# streams read it again when they reconnect to a new process.
PRESENCE_BATCH = 500


class Broker(abc.ABC):
    """Owns the database follower, which runs under the keeper for the broker's whole life
    (see catchup.py), and the broker's other background tasks."""

    def __init__(self, hub: Hub, store: Store, keeper: Keeper) -> None:
        self.hub = hub
        self.store = store
        self.keeper = keeper
        self.process_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.follower = DatabaseFollower(hub.sequencer, store)
        self._task_names: set[str] = set()
        # Told the keys of login sessions that ended on any process (None: any may have, forget
        # them all); the sessions module registers here.
        self.session_listeners: list[Callable[[list[str] | None], None]] = []

    async def start(self) -> None:
        self._spawn("follower", self.follower.run)

    async def close(self) -> None:
        for name in self._task_names:
            await self.keeper.stop(name)

    async def ping(self) -> None:  # noqa: B027 - nothing to ask in-process
        pass

    @abc.abstractmethod
    async def message_stored(self, message: Message) -> None:
        """A message committed by this process: to this process's streams and every other's."""

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

    def _spawn(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `work` under the keeper (restarted if it fails), unless it is running already."""
        self._task_names.add(f"broker-{name}")
        self.keeper.spawn(f"broker-{name}", work)


class LocalBroker(Broker):
    """One process: announcements go straight to the hub."""

    async def message_stored(self, message: Message) -> None:
        self.hub.sequencer.offer(message)

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
    """Announcements through one Redis channel; the table while Redis is away.

    Healthy: every process publishes what it stores and applies what it hears. Degraded (the
    subscription broke, or a publish failed): the follower reads the table often, while the
    broker keeps trying to tell every process to resync. On `resync` (or on resubscribing),
    each process ends its streams, which resume from the database, and is healthy again.
    """

    def __init__(self, hub: Hub, store: Store, keeper: Keeper, url: str, channel: str) -> None:
        super().__init__(hub, store, keeper)
        self.channel = channel
        self.redis = redis_policy.connect(url)
        self.announcer = Announcer(self.redis, channel, f"chat_server:announcer:{self.process_id}")
        self.healthy = False
        self.resyncs = 0
        self.messages_heard = 0  # message announcements of other processes applied here
        # The changes of this loop turn, and their announcement (True once sent).
        self._presence_batch: tuple[list[dict[str, Any]], asyncio.Future[bool]] | None = None
        # What only this process's own message announcements hold (see `message_stored`).
        self._own_token = b'"token":"%b:' % self.process_id.encode()

    async def start(self) -> None:
        # Other processes may be inserting below the id the hub starts at: wait them out, so
        # that no stream replays up to an id still to commit (see Sequencer). Ids in flight are
        # the newest few thousand (lanes x batch x processes): the window covers them.
        start = self.hub.released_id
        for attempt in range(STARTUP_SETTLE_ATTEMPTS):
            try:
                await self.store.writes_settled(max(0, start - STARTUP_WINDOW), start + 1)
                break
            except Unavailable:
                if attempt == STARTUP_SETTLE_ATTEMPTS - 1:
                    log.warning("could not settle the ids below %d at start: streams may miss one", start)
        await super().start()
        subscribed = asyncio.Event()
        self._spawn("reader", lambda: self._read_forever(subscribed))
        self._spawn("heartbeat", self._heartbeat_forever)
        # Our own announcements must come back to us before we post. If Redis is down, start
        # degraded: the follower reads the table, and the reader resyncs once Redis answers.
        try:
            async with asyncio.timeout(STARTUP_WAIT):
                await subscribed.wait()
        except TimeoutError:
            self._degrade("redis unreachable at start-up")
            return
        with contextlib.suppress(*redis_policy.FAILURES):  # else the first announcement connects
            async with redis_policy.bounded(PUBLISH_TIMEOUT):
                await self.announcer.connect()

    async def close(self) -> None:
        await super().close()
        await self.announcer.close()
        await self.redis.aclose()

    async def ping(self) -> None:
        await self.redis.ping()

    def _degrade(self, reason: str) -> None:
        if self.healthy:
            log.warning("redis fan-out degraded (%s): delivering from the database", reason)
        self.healthy = False
        self.follower.degraded = True
        self._spawn("resync", self._announce_resync)

    # -- publishing --------------------------------------------------------------

    async def message_stored(self, message: Message) -> None:
        """Announced first, then written to this process's own streams, so that the other
        processes write their shares of a big chat meanwhile. The announcement is one write on
        the announcer's connection, in this loop turn, with no reply to wait for (announcer.py)."""
        # "done" with a token: what a process of the previous version also understands.
        token = f"{self.process_id}:{message.id}"
        event = {"type": "done", "token": token, "message": message.announcement()}
        await self._publish(event, answered=False)
        self.hub.sequencer.offer(message)

    async def chat_created(self, chat: Chat) -> None:
        data = chat.to_json()
        if not await self._publish({"type": "chat", "chat": data}):
            self.hub.chat_created(data)

    async def presence_changed(self, change: dict[str, Any], user_ids: list[int] | None) -> None:
        """Changes made in one loop turn go out as one announcement: a burst of connects (a
        deploy, a reconnect storm) announces thousands of users coming online at once, and
        every process would otherwise wake and decode each of them."""
        item = {"change": change, "users": user_ids}
        batch = self._presence_batch
        if batch is None or len(batch[0]) >= PRESENCE_BATCH:
            items: list[dict[str, Any]] = []
            batch = self._presence_batch = (items, asyncio.ensure_future(self._publish_presence(items)))
        batch[0].append(item)
        if not await asyncio.shield(batch[1]):
            self.hub.presence(change, user_ids)

    async def _publish_presence(self, items: list[dict[str, Any]]) -> bool:
        """Starts once the loop turn that made the batch is over: its changes are all in."""
        if self._presence_batch is not None and self._presence_batch[0] is items:
            self._presence_batch = None  # changes made from now on go in the next one
        return await self._publish({"type": "presence_batch", "changes": items})

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

    async def _publish(self, event: dict[str, Any], *, answered: bool = True) -> bool:
        """Published on the channel (`answered`: through the shared client, else the
        announcer's connection); False, and degraded, when that failed."""
        try:
            async with redis_policy.bounded(PUBLISH_TIMEOUT):
                data = jsonutil.dumps(event)
                await (self.redis.publish(self.channel, data) if answered else self.announcer.publish(data))
            return True
        except redis_policy.FAILURES as exc:
            self._degrade(f"publish failed: {exc}")
            return False

    async def _announce_resync(self) -> None:
        """Once Redis answers again, tell every process (this one included) to resync."""
        while True:
            with contextlib.suppress(*redis_policy.FAILURES):
                async with redis_policy.bounded(PUBLISH_TIMEOUT):
                    await self.redis.publish(self.channel, b'{"type":"resync"}')
                return
            await asyncio.sleep(RECONNECT_DELAY)

    async def _heartbeat_forever(self) -> None:
        while True:
            with contextlib.suppress(*redis_policy.FAILURES):
                async with redis_policy.bounded(PUBLISH_TIMEOUT):
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
            except redis_policy.FAILURES as exc:
                self._degrade(f"subscription lost: {exc}")
            finally:
                with contextlib.suppress(*redis_policy.FAILURES):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(RECONNECT_DELAY)

    async def _read(self, pubsub: redis.client.PubSub) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            item = await pubsub.get_message(timeout=1.0)
            if item is not None:
                heard = loop.time()
                data = item["data"]
                # Our own messages were offered when stored: not decoded again (with N
                # processes, 1/N of what every process hears), only counted as heard back.
                if self._own_token not in data:
                    await self._apply(jsonutil.loads(data))
                else:
                    self.announcer.heard_back()
            elif loop.time() - heard > 3 * HEARTBEAT_SECONDS:
                raise TimeoutError("no heartbeat on the redis channel")
            if self.announcer.overdue(PUBLISH_TIMEOUT):
                # Its connection may be the broken part: the next announcement makes another.
                await self.announcer.close()
                raise TimeoutError("a message announcement did not come back on the channel")

    async def _apply(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "done":
            if event["message"] is not None:  # None: a failed insert of the previous version
                self.messages_heard += 1
                self.hub.sequencer.offer(await self._routed(event["message"]))
        elif kind == "chat":
            self.hub.chat_created(event["chat"])
        elif kind == "presence_batch":
            for item in event["changes"]:
                self.hub.presence(item["change"], item["users"])
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

    async def _routed(self, data: dict[str, Any]) -> Message:
        message = Message.from_json(data)
        if "members" not in data:
            # From a process of the previous version (a rolling restart): the DM's members,
            # which route it to per-user streams, come from the chat cache instead.
            members: dict[int, tuple[int, ...]] = {}
            with contextlib.suppress(Unavailable):  # then per-chat streams still get it
                members = await self.store.members_of([message.chat_id])
            message = replace(message, members=members.get(message.chat_id, ()))
        return message

    async def _resync(self) -> None:
        """Chat, presence and session events may have been missed: every stream resumes from
        the database (messages never need this: the watermark only passes what was sent)."""
        self.resyncs += 1
        self.announcer.forget()
        self.hub.end_streams()
        self._sessions_ended(None)  # an ending may have been missed: sessions are read again
        self.healthy = True
        self.follower.degraded = False


def channel_for(database_url: str) -> str:
    """Processes that share a database share a channel; others on the same Redis do not."""
    return "chat_server:" + database_url.rsplit("@", 1)[-1]


broker_key = web.AppKey("broker", Broker)
