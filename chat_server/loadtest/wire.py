"""The receiving end of the wire: tags in contenido, SSE frames, and per-stream accounting.

Cheap on purpose, since a worker handles tens of thousands of events a second: chunks are
split on blank lines, and only the `data:` of message events is parsed as JSON.
"""

from __future__ import annotations

from array import array
from typing import Any

import orjson

TAG = "lt"


def tag(run_id: str, seq: int, sent_ns: int) -> str:
    """The contenido of message `seq` of a run, posted at `sent_ns` (time.time_ns())."""
    return f"{TAG}:{run_id}:{seq}:{sent_ns}"


def tag_prefix(run_id: str) -> str:
    return f"{TAG}:{run_id}:"


def read_tag(contenido: Any, prefix: str) -> int | None:
    """The send time in a tag that starts with `prefix` (one run's), else None."""
    if not isinstance(contenido, str) or not contenido.startswith(prefix):
        return None
    _seq, _, sent = contenido[len(prefix) :].partition(":")
    return int(sent) if sent.isdigit() else None


def message_data(frame: bytes) -> bytes | None:
    """The data of a `message` event; None for comments (heartbeats), `retry:`, other events."""
    if frame.startswith(b":"):
        return None
    data, is_message = None, False
    for line in frame.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].removeprefix(b" ")
        elif line == b"event: message":
            is_message = True
    return data if is_message else None


class StreamState:
    """One stream's unparsed tail and the message ids it received, in arrival order."""

    __slots__ = ("chat_id", "duplicated", "ended", "ids", "last_id", "out_of_order", "pending")

    def __init__(self, chat_id: int) -> None:
        self.chat_id = chat_id
        self.pending = b""
        self.ids = array("q")
        self.last_id = 0
        self.duplicated = 0
        self.out_of_order = 0
        self.ended = False  # the server closed it before the run finished

    def record(self, message_id: int) -> bool:
        """Count one delivery; False when it is a duplicate."""
        if message_id > self.last_id:
            self.ids.append(message_id)
            self.last_id = message_id
            return True
        if message_id in self.ids:  # a linear search, but only off the ordered path
            self.duplicated += 1
            return False
        self.ids.append(message_id)
        self.out_of_order += 1
        return True

    def tally(self, expected: frozenset[int]) -> tuple[int, int]:
        """(lost, unexpected): ids posted to its chat it never got, ids it got that were not posted."""
        seen = set(self.ids)
        return len(expected - seen), len(seen - expected)


class Receiver:
    """Turns the bytes of every stream of one process into counts and latencies."""

    def __init__(self, run_id: str, drop_every: int = 0) -> None:
        self.prefix = tag_prefix(run_id)
        self.drop_every = drop_every
        self.arrivals = 0
        self.received = 0
        self.dropped = 0
        self.latencies_ms = array("d")
        self.last_ns: int | None = None

    def feed(self, stream: StreamState, chunk: bytes, now_ns: int) -> None:
        """Bytes read from `stream` at `now_ns` (time.time_ns())."""
        *frames, stream.pending = (stream.pending + chunk).split(b"\n\n")
        for frame in frames:
            data = message_data(frame)
            if data is not None:
                self.on_message(stream, data, now_ns)

    def on_message(self, stream: StreamState, data: bytes, now_ns: int) -> None:
        message = orjson.loads(data)
        sent_ns = read_tag(message.get("contenido"), self.prefix)
        if sent_ns is None:
            return  # not this run's
        self.arrivals += 1
        if self.drop_every and self.arrivals % self.drop_every == 0:
            self.dropped += 1  # as if it never arrived
            return
        self.received += 1
        self.last_ns = now_ns
        if stream.record(int(message["id"])):
            self.latencies_ms.append((now_ns - sent_ns) / 1e6)
