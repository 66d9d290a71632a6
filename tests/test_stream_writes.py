"""A stream's writes: the hub's direct writes (coalesced per loop turn) and the stream's own
buffered ones, under random pushes, slow socket writes, a backed-up socket, overflow and close.

Whatever the interleaving, the socket gets the events in the order they were pushed, each once,
none at or below the stream's floor; and a stream that was neither dropped nor closed gets all.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, cast

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from chat_server.hub import DIRECT_WRITE_LIMIT, Coalescer, Event, Subscriber
from chat_server.sse import encode_event

LIMIT = 4
IDS = re.compile(rb"id: (\d+)\n")


class FakeSocket:
    """The transport the hub writes to: records bytes; can be backed up."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.backlog = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing
        self.data += data

    def get_write_buffer_size(self) -> int:
        return self.backlog

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True

    def ids(self) -> list[int]:
        return [int(i) for i in IDS.findall(bytes(self.data))]


class StreamWrites(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.socket = FakeSocket()
        self.sub = Subscriber((1,), None, LIMIT, Coalescer())
        self.floor = 0
        self.pushed: list[int] = []
        self.next_id = 1
        self.write_done = asyncio.Event()
        self.writing = False
        self.pump: asyncio.Task[None] | None = None

    def _run(self, work: Any) -> Any:
        return self.loop.run_until_complete(work)

    async def _pump(self) -> None:
        """streams._pump, with a socket write that finishes when the test says so."""
        while True:
            batch = await self.sub.next_batch()
            if self.sub.overflowed:
                return
            if batch:
                self.writing = True
                await self.write_done.wait()
                self.write_done.clear()
                self.writing = False
                if self.socket.closing:
                    return
                self.socket.write(b"".join(e.frame for e in batch))
            elif self.sub.closed:
                return

    @precondition(lambda self: self.pump is None)
    @rule(floor=st.integers(0, 3), early=st.integers(0, 3))
    def connect(self, floor: int, early: int) -> None:
        """Subscribe, messages arrive during the replay, then the response starts."""

        async def connect() -> None:
            self.floor = floor
            self.sub.start_live(floor)
            for _ in range(early):
                self._push_one()
            replay = [i for i in range(1, floor + 1)]  # what the database replays
            self.socket.write(b"".join(encode_event("message", {}, event_id=i) for i in replay))
            self.sub.attach(cast(asyncio.Transport, self.socket), chunked=False)
            self.pump = asyncio.get_running_loop().create_task(self._pump())
            await asyncio.sleep(0)

        self._run(connect())

    def _push_one(self) -> None:
        message_id = self.next_id
        self.next_id += 1
        self.pushed.append(message_id)
        self.sub.push(Event(message_id, encode_event("message", {}, event_id=message_id)))

    @rule(count=st.integers(1, 6))
    def publish(self, count: int) -> None:
        async def publish() -> None:
            for _ in range(count):
                self._push_one()

        self._run(publish())

    @rule(turns=st.integers(1, 3))
    def loop_turns(self, turns: int) -> None:
        for _ in range(turns):
            self._run(asyncio.sleep(0))

    @precondition(lambda self: self.writing)
    @rule()
    def socket_write_finishes(self) -> None:
        self.write_done.set()
        self._run(asyncio.sleep(0))

    @rule(backed_up=st.booleans())
    def socket_backlog(self, backed_up: bool) -> None:
        self.socket.backlog = DIRECT_WRITE_LIMIT + 1 if backed_up else 0

    @rule()
    def hub_closes(self) -> None:
        self.sub.close()

    @invariant()
    def in_order_once_and_above_the_floor(self) -> None:
        ids = self.socket.ids()
        assert ids == sorted(set(ids)), ids
        live = [i for i in ids if i > self.floor]
        assert live == [i for i in self.pushed if i > self.floor][: len(live)], (live, self.pushed)

    def teardown(self) -> None:
        if self.pump is not None:
            self.socket.backlog = 0
            for _ in range(LIMIT + 50):
                self.write_done.set()
                self._run(asyncio.sleep(0))
            if not self.sub.overflowed and not self.sub.closed:
                live = [i for i in self.socket.ids() if i > self.floor]
                assert live == [i for i in self.pushed if i > self.floor]
            self.sub.close()
            self.write_done.set()
            self._run(asyncio.wait_for(self.pump, 1))
        self.loop.close()


StreamWrites.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=30,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_stream_writes_state_machine = StreamWrites.TestCase
