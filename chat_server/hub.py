"""In-process fan-out: per-chat sets of subscribers, each with a bounded buffer.

Messages enter through `Hub.sequenced()`, which hands them to subscribers in id order even
when concurrent inserts commit out of order. Each event is encoded once; a subscriber that is
caught up gets those same bytes written straight to its socket, without waking its handler
(the fast path). One whose socket is backed up gets the event in its buffer, which its handler
drains with back-pressure; one that falls behind past the buffer is disconnected (and counted),
and its EventSource resumes from the database. Publishing never waits on a subscriber.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from .models import Chat, Message
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
        self._buffer: deque[Event] = deque()
        self._ready = asyncio.Event()

    def push(self, event: Event) -> bool:
        if self.closed:
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
        # Ordering of concurrent inserts (see `sequenced`).
        self.released_id = 0
        self._tickets = itertools.count()
        self._in_flight: set[int] = set()
        self._waiting: list[tuple[int, int, int, Message | None]] = []  # (id, barrier, ticket, msg)

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

    def close(self) -> None:
        """End every stream (on shutdown); later subscribers are closed at once."""
        self._closed = True
        for subs in [*self._by_chat.values(), *self._by_user.values()]:
            for sub in list(subs):
                sub.close()

    # -- publishing --------------------------------------------------------------

    def publish(self, message: Message) -> None:
        event = Event(message.id, encode_event("message", message.to_json(), event_id=message.id))
        self.stats.published += 1
        self._fan_out(self._by_chat.get(message.chat_id, ()), event)

    def chat_created(self, chat: Chat) -> None:
        """A new DM: its participants' per-user streams follow it and are told about it."""
        event = Event(None, encode_event("chat", chat.to_json()))
        targets = []
        for member in chat.participants:
            for sub in self._by_user.get(member.id, ()):
                sub.chats.add(chat.id)
                self._by_chat.setdefault(chat.id, set()).add(sub)
                targets.append(sub)
        self._fan_out(targets, event)

    def _fan_out(self, subscribers: Iterable[Subscriber], event: Event) -> None:
        delivered = 0
        for sub in list(subscribers):
            if sub.push(event):
                delivered += 1
            elif sub.overflowed:
                self.stats.slow_disconnects += 1
        self.stats.deliveries += delivered

    @asynccontextmanager
    async def sequenced(self) -> AsyncIterator[Callable[[Message], None]]:
        """Insert a message inside this block and pass it to the callback it yields.

        Auto-increment ids are not commit-ordered: id 11 can commit before id 10. A message
        is released only once every insert that started before it finished has finished, and
        released messages go out in id order, so subscribers see ids strictly increasing.
        """
        ticket = next(self._tickets)
        self._in_flight.add(ticket)
        result: list[Message] = []
        try:
            yield result.append
        finally:
            barrier = max(self._in_flight)
            self._in_flight.discard(ticket)
            message = result[0] if result else None
            heapq.heappush(self._waiting, (message.id if message else -1, barrier, ticket, message))
            self._release()

    def _release(self) -> None:
        oldest_in_flight = min(self._in_flight, default=None)
        while self._waiting:
            _, barrier, _, message = self._waiting[0]
            if oldest_in_flight is not None and oldest_in_flight <= barrier:
                return
            heapq.heappop(self._waiting)
            if message is not None:
                self.released_id = max(self.released_id, message.id)
                self.publish(message)


def _discard(index: dict[int, set[Subscriber]], key: int, sub: Subscriber) -> None:
    subs = index.get(key)
    if subs is not None:
        subs.discard(sub)
        if not subs:
            del index[key]


hub_key = web.AppKey("hub", Hub)
