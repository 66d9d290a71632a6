"""The ordering core on its own: the sequencer, and the follower over a model of the table.

The state machine plays several processes sharing one table. Inserts take ids, commit or fail
in any order, and are announced to any subset of processes (announcements get lost), late or
not at all; followers read the table and prove gaps at any moment; streams subscribe, replay,
read slowly (and are dropped and resume), and resync. After every step, no stream has a
duplicate, an id out of order, or a committed id below its newest that it never got; at the
end, once everything has settled, every stream has every committed message of its chats.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Coroutine, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from chat_server.catchup import DatabaseFollower
from chat_server.models import Message
from chat_server.sequencer import Sequencer

CHATS = (1, 2)
MOMENT = datetime(2026, 1, 1, tzinfo=UTC)


def message(message_id: int, chat_id: int = 1) -> Message:
    return Message(message_id, chat_id, 1, "ana", f"m{message_id}", MOMENT)


# -- the sequencer, table-driven ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "offers", "settle", "released", "watermark"),
    [
        (0, [1, 2, 3], None, [1, 2, 3], 3),
        (0, [3, 1, 2], None, [1, 2, 3], 3),  # committed out of order, released in order
        (0, [2, 3], None, [], 0),  # 1 may still commit: nothing passes it
        (0, [1, 1, 2, 1, 2], None, [1, 2], 2),  # the same message announced and read: once
        (5, [3, 6], None, [6], 6),  # below the start: the stream's replay has it
        (0, [2, 5], 6, [2, 5], 5),  # 1, 3, 4 proven absent: the rest goes, in order
        (0, [2, 5], 3, [2], 2),  # a proof up to 3 says nothing of 4
        (0, [4], 2, [], 1),
    ],
)
def test_sequencer_releases_in_id_order_once(
    start: int, offers: list[int], settle: int | None, released: list[int], watermark: int
) -> None:
    out: list[int] = []
    sequencer = Sequencer(lambda m: out.append(m.id), start)
    for message_id in offers:
        sequencer.offer(message(message_id))
    if settle is not None:
        sequencer.settle_below(settle)
    assert out == released
    assert sequencer.released_id == watermark
    assert sequencer.late == 0


def test_a_message_proven_absent_that_turns_up_is_counted_late_and_still_delivered() -> None:
    out: list[int] = []
    sequencer = Sequencer(lambda m: out.append(m.id))
    sequencer.offer(message(2))
    sequencer.settle_below(2)
    sequencer.offer(message(1))  # only a wrong proof can do this
    assert out == [2, 1]
    assert sequencer.late == 1
    assert sequencer.proven_absent == 1


def test_each_release_observes_how_long_the_message_waited_for_lower_ids() -> None:
    now = [100.0]
    sequencer = Sequencer(lambda m: None, clock=lambda: now[0])
    sequencer.offer(message(2))  # waits for 1
    now[0] += 0.04
    sequencer.offer(message(3))
    now[0] += 0.002
    sequencer.offer(message(1))  # released at once, and so are 2 and 3 after it
    sequencer.offer(message(2))  # again (another process's announcement): not a release
    waits = sequencer.held_for
    assert waits.count == 3
    assert waits.sum == pytest.approx(0.042 + 0.002)
    assert dict(waits.cumulative())["0.0001"] == 1  # 1 did not wait
    assert dict(waits.cumulative())["0.0025"] == 2  # 3 waited 2 ms
    assert dict(waits.cumulative())["0.05"] == 3  # 2 waited 42 ms


def test_the_gap_to_prove_is_the_smallest_held_id() -> None:
    sequencer = Sequencer(lambda m: None)
    seen = [sequencer.gap_below]
    for message_id in (4, 3, 1, 2):
        sequencer.offer(message(message_id))
        seen.append(sequencer.gap_below)
    assert seen == [None, 4, 3, 3, None]
    assert sequencer.idle


# -- a model of the table, and coroutines stepped by hand ----------------------------------------


class Pause:
    """Where a fake database call yields to the rest of the world."""

    def __await__(self) -> Generator[None]:
        yield


@dataclass
class Table:
    """Ids handed out in order; rows visible once committed; `running` = handed out, not ended."""

    next_id: int = 1
    rows: dict[int, Message] = field(default_factory=dict)
    running: dict[int, list[Message]] = field(default_factory=dict)  # insert -> its rows

    def begin(self, insert: int, chat_ids: list[int]) -> None:
        ids = range(self.next_id, self.next_id + len(chat_ids))
        self.next_id += len(chat_ids)
        self.running[insert] = [message(i, c) for i, c in zip(ids, chat_ids, strict=True)]

    def end(self, insert: int, commit: bool) -> list[Message]:
        rows = self.running.pop(insert)
        if not commit:
            return []
        for row in rows:
            self.rows[row.id] = row
        return rows

    async def messages_after(self, after_id: int, limit: int) -> list[Message]:
        found = sorted((m for m in self.rows.values() if m.id > after_id), key=lambda m: m.id)[:limit]
        await Pause()  # the answer is read now and arrives later: commits may happen meanwhile
        return found

    async def writes_settled(self, after_id: int, below_id: int) -> None:
        waiting = set(self.running)
        while waiting & set(self.running):
            await Pause()


@dataclass
class Stream:
    """A stream as streams.py runs it: subscribe (floor = watermark), replay, then live."""

    chats: tuple[int, ...]
    first_after: int  # Last-Event-ID it was opened with
    floor: int
    received: list[int]
    unread: int = 0
    closed: bool = False

    def push(self, m: Message, limit: int) -> None:
        if self.closed or m.chat_id not in self.chats or m.id <= self.floor:
            return
        if self.unread >= limit:
            self.closed = True  # a slow reader is dropped; its EventSource resumes
            return
        self.received.append(m.id)
        self.unread += 1


class Process:
    def __init__(self, table: Table, start: int) -> None:
        self.sequencer = Sequencer(self._release, start)
        self.follower = DatabaseFollower(self.sequencer, table)
        self.catching_up: Coroutine[Any, Any, None] | None = None
        self.streams: list[Stream] = []
        self.inbox: list[Message] = []  # announcements on their way to this process

    def _release(self, m: Message) -> None:
        for stream in self.streams:
            stream.push(m, BUFFER)

    def step_follower(self) -> None:
        if self.catching_up is None:
            self.catching_up = self.follower.catch_up()
        try:
            self.catching_up.send(None)
        except StopIteration:
            self.catching_up = None


BUFFER = 4


class Ordering(RuleBasedStateMachine):
    inserts = Bundle("inserts")

    def __init__(self) -> None:
        super().__init__()
        self.table = Table()
        self.processes: list[Process] = []
        self.numbers = itertools.count()

    @initialize(count=st.integers(1, 3))
    def processes_start(self, count: int) -> None:
        self.processes = [Process(self.table, 0) for _ in range(count)]

    def process(self, index: int) -> Process:
        return self.processes[index % len(self.processes)]

    @rule(target=inserts, chat_ids=st.lists(st.sampled_from(CHATS), min_size=1, max_size=3))
    def begin_insert(self, chat_ids: list[int]) -> int:
        insert = next(self.numbers)
        self.table.begin(insert, chat_ids)
        return insert

    @rule(
        insert=consumes(inserts), commit=st.booleans(), by=st.integers(0, 2), told=st.sets(st.integers(0, 2))
    )
    def end_insert(self, insert: int, commit: bool, by: int, told: set[int]) -> None:
        """Commit or fail; announced at once to its own process (unless it died) and queued for
        the processes in `told` (the others never hear of it)."""
        rows = self.table.end(insert, commit)
        for index in told:
            self.process(index).inbox.extend(rows)
        if by in told:
            self.process(by).sequencer.offer_all(rows)

    @rule(index=st.integers(0, 2), which=st.integers(0, 100))
    def deliver_announcement(self, index: int, which: int) -> None:
        inbox = self.process(index).inbox
        if inbox:
            self.process(index).sequencer.offer(inbox.pop(which % len(inbox)))

    @rule(index=st.integers(0, 2), steps=st.integers(1, 4))
    def follower_steps(self, index: int, steps: int) -> None:
        for _ in range(steps):
            self.process(index).step_follower()

    @rule(index=st.integers(0, 2), chats=st.sampled_from([(1,), (2,), CHATS]), back=st.integers(0, 5))
    def subscribe(self, index: int, chats: tuple[int, ...], back: int) -> None:
        process = self.process(index)
        after = max(0, process.sequencer.released_id - back)
        process.streams.append(self._open(process, chats, after))

    @rule(index=st.integers(0, 2), which=st.integers(0, 100))
    def read(self, index: int, which: int) -> None:
        streams = self.process(index).streams
        if streams:
            streams[which % len(streams)].unread = 0

    @rule(index=st.integers(0, 2))
    def resync(self, index: int) -> None:
        """End every stream of a process; each resumes by its Last-Event-ID."""
        process = self.process(index)
        for stream in process.streams:
            stream.closed = True
        self._resume_closed(process)

    @rule(index=st.integers(0, 2))
    def resume_dropped(self, index: int) -> None:
        self._resume_closed(self.process(index))

    @rule(index=st.integers(0, 2), to=st.integers(0, 2), which=st.integers(0, 100))
    def move(self, index: int, to: int, which: int) -> None:
        """A stream's connection breaks and its EventSource comes back on another process
        (a restart, a load balancer), which may be behind or ahead of the first."""
        source, target = self.process(index), self.process(to)
        if source is target or not source.streams:
            return
        stream = source.streams.pop(which % len(source.streams))
        last = stream.received[-1] if stream.received else stream.first_after
        moved = self._open(target, stream.chats, last)
        moved.received[:0] = stream.received
        moved.first_after = stream.first_after
        target.streams.append(moved)

    def _resume_closed(self, process: Process) -> None:
        for i, stream in enumerate(process.streams):
            if stream.closed:
                resumed = self._open(
                    process, stream.chats, stream.received[-1] if stream.received else stream.first_after
                )
                resumed.received[:0] = stream.received
                resumed.first_after = stream.first_after
                process.streams[i] = resumed

    def _open(self, process: Process, chats: tuple[int, ...], after: int) -> Stream:
        """As streams.py: replay (after, watermark], then live above max(watermark, after)."""
        upto = process.sequencer.released_id
        replay = [i for i, m in sorted(self.table.rows.items()) if after < i <= upto and m.chat_id in chats]
        return Stream(chats, after, max(upto, after), replay)

    # -- what must hold after every step ---------------------------------------------------------

    @invariant()
    def every_stream_in_order_once_and_nothing_passed(self) -> None:
        for process in self.processes:
            assert process.sequencer.late == 0
            for stream in process.streams:
                got = stream.received
                assert got == sorted(set(got)), "duplicate or out of order"
                if got:
                    committed = [
                        i
                        for i, m in self.table.rows.items()
                        if stream.first_after < i < got[-1] and m.chat_id in stream.chats
                    ]
                    assert set(committed) <= set(got), "a stream's Last-Event-ID passed a message"

    def teardown(self) -> None:
        """Everything ends and settles; every stream then has every committed message."""
        if not self.processes:
            return
        for insert in list(self.table.running):
            self.table.end(insert, commit=True)
        for process in self.processes:
            process.sequencer.offer_all(process.inbox)
            newest = max(self.table.rows, default=0)
            for _ in range(1000):
                process.step_follower()
                if process.catching_up is None and process.sequencer.released_id >= newest:
                    break
            assert process.sequencer.released_id >= newest
            self._resume_closed(process)
            for stream in process.streams:
                expected = [
                    i
                    for i, m in sorted(self.table.rows.items())
                    if i > stream.first_after and m.chat_id in stream.chats
                ]
                assert stream.received == expected
        self.every_stream_in_order_once_and_nothing_passed()


# Deterministic in `make test` (the same examples every run, no example database); raise
# ORDERING_EXAMPLES for a deeper search, which then also varies between runs.
EXAMPLES = int(os.environ.get("ORDERING_EXAMPLES", "400"))
Ordering.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    database=None,
    derandomize="ORDERING_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow],
)
test_ordering_state_machine = Ordering.TestCase
