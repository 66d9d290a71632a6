"""In-process fan-out: per-chat and per-user sets of subscribers, each with a bounded buffer.

A stream of one chat is in that chat's set. A per-user stream is only in its user's set, and
holds nothing per chat: a message reaches it because the message names its DM's participants
(`Message.members`), or because it is General's, which reaches every per-user stream. So an
admin with 100,000 DMs costs one set entry, and a new DM needs no subscription change.

Messages reach subscribers through the hub's `Sequencer`, in id order even when concurrent
inserts commit out of order. Each event is encoded once; a subscriber that is
caught up gets those same bytes written straight to its socket, without waking its handler
(the fast path). One whose socket is backed up gets the event in its buffer, which its handler
drains with back-pressure; one that falls behind past the buffer is disconnected (and counted),
and its EventSource resumes from the database. Publishing never waits on a subscriber.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .histogram import Histogram
from .models import Message
from .sequencer import Sequencer
from .sse import HEARTBEAT, encode_event

# A socket with more than this waiting in user space is backed up: queue instead of writing.
DIRECT_WRITE_LIMIT = 64 * 1024
# Heartbeats: every stream is looked at each BEAT_PASS of the interval, and gets a heartbeat only
# if nothing was written to it since its last look; so an idle stream gets one every other pass
# and a busy one none. A pass goes BEAT_SLICE streams per loop turn (one turn writing to 20,000
# sockets stalled every post and delivery for 100+ ms), its slices spread over BEAT_SPREAD of the
# interval. A stream is silent at most (2 * BEAT_PASS + BEAT_SPREAD) * interval = the interval.
BEAT_PASS = 0.4
BEAT_SPREAD = 0.2
BEAT_SLICE = 256


@dataclass(frozen=True, slots=True)
class Event:
    id: int | None  # the message id, also the SSE id; None for events that are not messages
    frame: bytes  # the whole SSE frame, encoded once for every subscriber
    chunk: bytes = field(init=False)  # the frame in HTTP/1.1 chunked framing, for direct writes
    born: float = field(init=False)  # when the hub released it (monotonic), for the latency metric

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunk", b"%x\r\n%b\r\n" % (len(self.frame), self.frame))
        object.__setattr__(self, "born", time.monotonic())


class Coalescer:
    """Direct writes made during one turn of the event loop go out together, one send() per
    socket: under load, the messages released in a burst reach each stream in one syscall."""

    __slots__ = ("_dirty", "_scheduled")

    def __init__(self) -> None:
        self._dirty: list[Subscriber] = []
        self._scheduled = False

    def add(self, sub: Subscriber) -> None:
        self._dirty.append(sub)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for sub in dirty:
            sub.flush()


class Subscriber:
    """One open stream: the chats it follows, and how its events reach its socket.

    Invariant: events reach the socket in the order they were pushed (id order, as the hub
    releases them), each once. The hub writes an event straight to the socket (coalesced per
    loop turn) only while the stream is *caught up*: attached to its socket, nothing buffered,
    and no batch of its own being written (its pump is waiting in `next_batch`). Otherwise the
    event is buffered, and the stream's pump writes it after whatever it is writing. Messages
    at or below the floor (sent by the stream's replay, or before its Last-Event-ID) are skipped.

    The stream changes this state only through `start_live`, `attach`, `next_batch` and
    `abort`; the hub through `push`, `beat` and `close`. A stream was *written to* since the
    last `beat` if anything reached its socket then (it starts so: its preamble is written).
    """

    # Slots, lists made only when needed and a bare future: an idle stream costs little.
    __slots__ = (
        "_buffer",
        "_caught_up",
        "_chunked",
        "_coalescer",
        "_floor",
        "_outbox",
        "_transport",
        "_waiter",
        "_written",
        "chats",
        "closed",
        "limit",
        "overflowed",
        "user_id",
    )

    def __init__(self, chats: Iterable[int], user_id: int | None, limit: int, coalescer: Coalescer) -> None:
        # A per-chat stream's chat never changes (a tuple is a fraction of a set's size, and
        # there may be 10,000 of them); a per-user stream has none: it is routed by user.
        self.chats: tuple[int, ...] = tuple(chats) if user_id is None else ()
        self.user_id = user_id  # set for a per-user stream: every chat of that user
        self.limit = limit
        self.closed = False
        self.overflowed = False
        self._transport: asyncio.Transport | None = None
        self._chunked = True
        self._caught_up = False  # the pump waits in next_batch, with nothing left to write
        self._floor = 0
        self._buffer: list[Event] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._outbox: list[bytes] | None = None  # direct writes of this loop turn
        self._coalescer = coalescer
        self._written = True  # since the last beat (a new stream writes its preamble)

    def start_live(self, floor: int) -> None:
        """Live messages from above `floor` on: the stream sends the rest itself (its replay),
        also those that arrived since it subscribed."""
        self._floor = floor
        if self._buffer:
            self._buffer = [e for e in self._buffer if e.id is None or e.id > floor]

    def attach(self, transport: asyncio.Transport | None, chunked: bool) -> None:
        """The response has started on this socket (HTTP/1.1 chunked, or bare frames)."""
        self._transport = transport
        self._chunked = chunked

    def abort(self) -> None:
        """Drop the connection at once (a peer that stopped reading: closing would wait on it)."""
        self.close()
        if self._transport is not None:
            self._transport.abort()

    def push(self, event: Event) -> bool:
        if self.closed or (event.id is not None and event.id <= self._floor):
            return False
        if self._write_direct(event):
            return True
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = []
        if len(buffer) >= self.limit:
            self.overflowed = True
            self.abort()  # it may be stuck in a write to a peer that stopped reading
            return False
        buffer.append(event)
        self._wake()
        return True

    def _write_direct(self, event: Event) -> bool:
        """Write to the socket (at the end of this loop turn), when caught up and the socket is
        not backed up."""
        transport = self._transport
        if not self._caught_up or transport is None or self._buffer:
            return False
        if transport.is_closing():
            self.close()
            return True  # nothing more will reach this peer
        outbox = self._outbox
        if outbox is not None and len(outbox) >= self.limit:
            return False
        if transport.get_write_buffer_size() > DIRECT_WRITE_LIMIT:
            return False
        data = event.chunk if self._chunked else event.frame
        if outbox is None:
            self._outbox = [data]
            self._coalescer.add(self)
        else:
            outbox.append(data)
        return True

    def flush(self) -> None:
        outbox, self._outbox = self._outbox, None
        transport = self._transport
        if outbox and transport is not None and not transport.is_closing():
            transport.write(outbox[0] if len(outbox) == 1 else b"".join(outbox))
            self._written = True

    def beat(self, heartbeat: Event) -> bool:
        """A heartbeat for a caught-up stream that nothing was written to since the last beat (a
        busy one is writing anyway); whether it got one."""
        if self._written:
            self._written = False
            return False
        return not self.closed and self._write_direct(heartbeat)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_batch(self) -> list[Event]:
        """Everything waiting, as soon as there is something; [] once closed. The caller has
        written all it got before: until this returns a batch, the hub may write directly."""
        self._caught_up = True
        if not self._buffer and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        batch, self._buffer = self._buffer or [], None
        if batch:
            self._caught_up = False  # the caller writes it: direct writes would overtake it
            self._written = True
        return batch


@dataclass
class HubStats:
    published: int = 0
    deliveries: int = 0
    slow_disconnects: int = 0
    heartbeats: int = 0
    replayed: int = 0  # messages sent from the database on (re)connect
    # Release to socket write, per delivery: written in the fan-out, or later by the stream.
    write_latency: Histogram = field(default_factory=Histogram)


class Hub:
    def __init__(self, buffer: int, released_id: int = 0) -> None:
        self.buffer = buffer
        self.beat_slice = BEAT_SLICE
        self.stats = HubStats()
        self._by_chat: dict[int, set[Subscriber]] = {}
        self._by_user: dict[int, set[Subscriber]] = {}  # per-user streams, by their user
        self._per_user: set[Subscriber] = set()  # every per-user stream: General's audience
        self._all: set[Subscriber] = set()
        # Set once the store knows it: General's messages go to every per-user stream.
        self.general_id = 0
        self._coalescer = Coalescer()
        self._closed = False
        self.sequencer = Sequencer(self.publish, released_id)

    # -- subscribers -------------------------------------------------------------

    def subscribe(self, chats: Iterable[int], user_id: int | None = None) -> Subscription:
        """`async with hub.subscribe(...) as sub`: registered for the body of the block, and
        always unregistered after (a plain class, not a generator: thousands stay open). With
        `user_id`, a per-user stream (every chat of that user; `chats` is ignored)."""
        return Subscription(self, Subscriber(chats, user_id, self.buffer, self._coalescer))

    def _register(self, sub: Subscriber) -> None:
        if self._closed:
            sub.close()
        for chat_id in sub.chats:
            self._by_chat.setdefault(chat_id, set()).add(sub)
        if sub.user_id is not None:
            self._by_user.setdefault(sub.user_id, set()).add(sub)
            self._per_user.add(sub)
        self._all.add(sub)

    def _unregister(self, sub: Subscriber) -> None:
        sub.close()
        self._all.discard(sub)
        for chat_id in sub.chats:
            _discard(self._by_chat, chat_id, sub)
        if sub.user_id is not None:
            _discard(self._by_user, sub.user_id, sub)
            self._per_user.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._all)

    def is_empty(self) -> bool:
        return not (self._all or self._by_chat or self._by_user or self._per_user)

    @property
    def released_id(self) -> int:
        """Every message up to this id has been handed to subscribers (or never will be)."""
        return self.sequencer.released_id

    def end_streams(self) -> None:
        """End every open stream; each EventSource reconnects and resumes from the database."""
        for sub in list(self._all):
            sub.close()

    def close(self) -> None:
        """End every stream (on shutdown); later subscribers are closed at once."""
        self._closed = True
        self.end_streams()

    async def beat_forever(self, interval: float) -> None:
        """Heartbeats for every idle stream from one task, so idle streams need no timers: a
        pass every BEAT_PASS of the interval, on the clock (a pass's own time does not add up)."""
        loop = asyncio.get_running_loop()
        period = BEAT_PASS * interval
        due = loop.time() + period
        while True:
            await asyncio.sleep(due - loop.time())
            await self.beat(BEAT_SPREAD * interval)
            due = max(due + period, loop.time())  # late (a stalled loop): no passes to catch up

    async def beat(self, spread: float = 0.0) -> None:
        """One heartbeat pass over the streams open now, `beat_slice` of them per loop turn, the
        slices spread over `spread` seconds."""
        heartbeat = Event(None, HEARTBEAT)
        subs = list(self._all)
        starts = range(0, len(subs), self.beat_slice)
        pause = spread / len(starts) if starts else 0.0
        for start in starts:
            if start:
                await asyncio.sleep(pause)
            for sub in subs[start : start + self.beat_slice]:
                self.stats.heartbeats += sub.beat(heartbeat)

    # -- publishing --------------------------------------------------------------

    def publish(self, message: Message) -> None:
        """To the chat's own streams, and to the per-user streams of its members (of everyone,
        for General). Encoded only when someone here follows it: with Redis, a process hears
        every message of every chat."""
        self.stats.published += 1
        targets: list[Subscriber] = list(self._by_chat.get(message.chat_id, ()))
        if message.chat_id == self.general_id:
            targets.extend(self._per_user)
        else:
            targets.extend(self._user_streams(message.members))
        if targets:
            self._fan_out(
                targets, Event(message.id, encode_event("message", message.to_json(), event_id=message.id))
            )

    def chat_created(self, chat: dict[str, Any]) -> None:
        """A new DM (as JSON): its participants' per-user streams are told (its messages reach
        them by their members, with no subscription change)."""
        members = [member["id"] for member in chat["participants"]]
        self._fan_out(self._user_streams(members), Event(None, encode_event("chat", chat)))

    def presence(self, change: dict[str, Any], user_ids: Iterable[int] | None) -> None:
        """A user came online or went offline: tell the per-user streams of `user_ids` (their DM
        partners), or of everyone when None (the admin, who has a DM with everyone)."""
        event = Event(None, encode_event("presence", change))
        audience = self._per_user if user_ids is None else self._user_streams(user_ids)
        self._fan_out([sub for sub in audience if sub.user_id != change["user_id"]], event)

    def _user_streams(self, user_ids: Iterable[int]) -> list[Subscriber]:
        return [sub for user_id in user_ids for sub in self._by_user.get(user_id, ())]

    def chat_read(self, user_id: int, marker: dict[str, Any], partners: Iterable[int]) -> None:
        """The user moved a read marker: their own per-user streams (their other tabs) get it with
        their unread count; `partners` (a DM's other participant) get how far they read."""
        own = {**marker, "user_id": user_id}
        self._fan_out(list(self._by_user.get(user_id, ())), Event(None, encode_event("read", own)))
        seen = {"chat_id": marker["chat_id"], "user_id": user_id, "last_read_id": marker["last_read_id"]}
        self._to_users(partners, Event(None, encode_event("read", seen)))

    def typing(self, typing: dict[str, Any], user_ids: Iterable[int]) -> None:
        """Someone is typing: these users' per-user streams are told (never stored or replayed)."""
        self._to_users(user_ids, Event(None, encode_event("typing", typing)))

    def _to_users(self, user_ids: Iterable[int], event: Event) -> None:
        self._fan_out(self._user_streams(user_ids), event)

    def _fan_out(self, subscribers: list[Subscriber], event: Event) -> None:
        """`subscribers` is the caller's own list (a push may end a stream, which leaves the
        hub's sets: never iterate those here)."""
        delivered = queued = 0
        for sub in subscribers:
            if sub.push(event):
                delivered += 1
                queued += bool(sub._buffer)  # its stream writes it, and observes the latency then
            elif sub.overflowed:
                self.stats.slow_disconnects += 1
        self.stats.deliveries += delivered
        # One reading for every write made during the fan-out: cheap, and an upper bound.
        self.stats.write_latency.observe(time.monotonic() - event.born, delivered - queued)


class Subscription:
    __slots__ = ("hub", "subscriber")

    def __init__(self, hub: Hub, subscriber: Subscriber) -> None:
        self.hub = hub
        self.subscriber = subscriber

    async def __aenter__(self) -> Subscriber:
        self.hub._register(self.subscriber)
        return self.subscriber

    async def __aexit__(self, *exc_info: object) -> None:
        self.hub._unregister(self.subscriber)


def _discard(index: dict[int, set[Subscriber]], key: int, sub: Subscriber) -> None:
    subs = index.get(key)
    if subs is not None:
        subs.discard(sub)
        if not subs:
            del index[key]


hub_key = web.AppKey("hub", Hub)
