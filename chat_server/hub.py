"""In-process fan-out: per-chat sets of subscribers, each with a bounded buffer.

Messages reach subscribers through the hub's `Sequencer`, in id order even when concurrent
inserts commit out of order. Each event is encoded once; a subscriber that is
caught up gets those same bytes written straight to its socket, without waking its handler
(the fast path). One whose socket is backed up gets the event in its buffer, which its handler
drains with back-pressure; one that falls behind past the buffer is disconnected (and counted),
and its EventSource resumes from the database. Publishing never waits on a subscriber.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .models import Message
from .sequencer import Sequencer
from .sse import encode_event

# A socket with more than this waiting in user space is backed up: queue instead of writing.
DIRECT_WRITE_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Event:
    id: int | None  # the message id, also the SSE id; None for events that are not messages
    frame: bytes  # the whole SSE frame, encoded once for every subscriber
    chunk: bytes = field(init=False)  # the frame in HTTP/1.1 chunked framing, for direct writes

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunk", b"%x\r\n%b\r\n" % (len(self.frame), self.frame))


class Subscriber:
    """One open stream: the chats it follows and the events waiting to be written."""

    __slots__ = (
        "_buffer",
        "_ready",
        "chats",
        "chunked",
        "closed",
        "direct",
        "floor",
        "limit",
        "overflowed",
        "transport",
        "user_id",
    )

    def __init__(self, chats: Iterable[int], user_id: int | None, limit: int) -> None:
        self.chats = set(chats)
        self.user_id = user_id  # set for a per-user stream, which also gets its new chats
        self.limit = limit
        self.closed = False
        self.overflowed = False
        # Set by the stream once its response has started: direct writes go to this socket,
        # but only while `direct` (never during the replay, which must come first).
        self.transport: asyncio.Transport | None = None
        self.chunked = True
        self.direct = False
        # Messages up to this id were (or will be) sent by the stream's replay: skip them live.
        self.floor = 0
        self._buffer: deque[Event] = deque()
        self._ready = asyncio.Event()

    def push(self, event: Event) -> bool:
        if self.closed or (event.id is not None and event.id <= self.floor):
            return False
        transport = self.transport
        if self.direct and transport is not None and not self._buffer:
            if transport.is_closing():
                self.close()
                return False
            if transport.get_write_buffer_size() <= DIRECT_WRITE_LIMIT:
                transport.write(event.chunk if self.chunked else event.frame)
                return True
        if len(self._buffer) >= self.limit:
            self.overflowed = True
            self.close()
            if transport is not None:
                transport.abort()  # it may be stuck in a write to a peer that stopped reading
            return False
        self._buffer.append(event)
        self._ready.set()
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._ready.set()

    async def next_batch(self, idle_seconds: float) -> list[Event]:
        """Everything waiting, as soon as there is something; [] when idle that long, or closed."""
        if not self._buffer and not self.closed:
            try:
                async with asyncio.timeout(idle_seconds):
                    await self._ready.wait()
            except TimeoutError:
                pass
        self._ready.clear()
        batch = list(self._buffer)
        self._buffer.clear()
        return batch


@dataclass
class HubStats:
    published: int = 0
    deliveries: int = 0
    slow_disconnects: int = 0


class Hub:
    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self.stats = HubStats()
        self._by_chat: dict[int, set[Subscriber]] = {}
        self._by_user: dict[int, set[Subscriber]] = {}
        self._closed = False
        self.sequencer = Sequencer(self.publish)

    # -- subscribers -------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self, chats: Iterable[int], user_id: int | None = None) -> AsyncIterator[Subscriber]:
        """Register a subscriber for the body of the block; it is always unregistered after."""
        sub = Subscriber(chats, user_id, self.buffer)
        if self._closed:
            sub.close()
        for chat_id in sub.chats:
            self._by_chat.setdefault(chat_id, set()).add(sub)
        if user_id is not None:
            self._by_user.setdefault(user_id, set()).add(sub)
        try:
            yield sub
        finally:
            sub.close()
            for chat_id in sub.chats:
                _discard(self._by_chat, chat_id, sub)
            if user_id is not None:
                _discard(self._by_user, user_id, sub)

    @property
    def subscriber_count(self) -> int:
        return len({s for subs in self._by_chat.values() for s in subs})

    def is_empty(self) -> bool:
        return not self._by_chat and not self._by_user

    @property
    def released_id(self) -> int:
        """Every message up to this id has been handed to subscribers (or never will be)."""
        return self.sequencer.released_id

    def end_streams(self) -> None:
        """End every open stream; each EventSource reconnects and resumes from the database."""
        for subs in [*self._by_chat.values(), *self._by_user.values()]:
            for sub in list(subs):
                sub.close()

    def close(self) -> None:
        """End every stream (on shutdown); later subscribers are closed at once."""
        self._closed = True
        self.end_streams()

    # -- publishing --------------------------------------------------------------

    def publish(self, message: Message) -> None:
        event = Event(message.id, encode_event("message", message.to_json(), event_id=message.id))
        self.stats.published += 1
        self._fan_out(self._by_chat.get(message.chat_id, ()), event)

    def chat_created(self, chat: dict[str, Any]) -> None:
        """A new DM (as JSON): its participants' per-user streams follow it and are told about it."""
        event = Event(None, encode_event("chat", chat))
        targets = []
        for member in chat["participants"]:
            for sub in self._by_user.get(member["id"], ()):
                sub.chats.add(chat["id"])
                self._by_chat.setdefault(chat["id"], set()).add(sub)
                targets.append(sub)
        self._fan_out(targets, event)

    def presence(self, change: dict[str, Any], chat_ids: Iterable[int]) -> None:
        """A user came online or went offline: tell the per-user streams of their chats' others."""
        event = Event(None, encode_event("presence", change))
        targets = {
            sub
            for chat_id in chat_ids
            for sub in self._by_chat.get(chat_id, ())
            if sub.user_id is not None and sub.user_id != change["user_id"]
        }
        self._fan_out(targets, event)

    def _fan_out(self, subscribers: Iterable[Subscriber], event: Event) -> None:
        delivered = 0
        for sub in list(subscribers):
            if sub.push(event):
                delivered += 1
            elif sub.overflowed:
                self.stats.slow_disconnects += 1
        self.stats.deliveries += delivered


def _discard(index: dict[int, set[Subscriber]], key: int, sub: Subscriber) -> None:
    subs = index.get(key)
    if subs is not None:
        subs.discard(sub)
        if not subs:
            del index[key]


hub_key = web.AppKey("hub", Hub)
