"""A lean SSE client for thousands of streams: an asyncio Protocol, no coroutine per stream.

aiohttp's client wakes a coroutine for every chunk of every stream; with thousands of streams
on the same cores as the server, that cost would be measured as the server's latency. Here
each chunk goes straight from `data_received` to the Receiver. The chunked transfer coding
is not undone: its size lines sit between SSE frames, where the Receiver skips them as lines
that are not fields (frames end in a blank line, which the coding never contains).
"""

from __future__ import annotations

import asyncio
import time
from typing import cast
from urllib.parse import urlencode, urlsplit

from .config import LoadTestError
from .wire import Receiver, StreamState

# Status line and headers of a response, at most.
MAX_HEAD = 16 * 1024


class SseClient(asyncio.Protocol):
    def __init__(self, receiver: Receiver, stream: StreamState, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.receiver = receiver
        self.stream = stream
        self.request = request
        self.ready: asyncio.Future[None] = loop.create_future()  # the preamble arrived
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._head: bytes | None = b""  # None once the headers are read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self._head is not None:
            data = self._read_head(data)
            if not data:
                return
        if not self.ready.done() and b"\n\n" in self.stream.pending + data:
            self.ready.set_result(None)
        self.receiver.feed(self.stream, data, time.time_ns())

    def _read_head(self, data: bytes) -> bytes:
        assert self._head is not None
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self._head = head
            if len(head) > MAX_HEAD:
                self._fail(LoadTestError("response head too large"))
            return b""
        status = head[: head.find(b"\r\n")]
        if status.split(b" ", 2)[1:2] != [b"200"]:
            self._fail(LoadTestError(f"{status.decode(errors='replace')}: {head[end + 4 :][:200]!r}"))
            return b""
        self._head = None
        return head[end + 4 :]

    def _fail(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc or LoadTestError("connection closed before the stream began"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_stream(
    url: str,
    params: dict[str, str],
    last_id: int | None,
    receiver: Receiver,
    stream: StreamState,
    source: str | None = None,
) -> SseClient:
    """Connect (from the local address `source`, if given), send the request, and return once
    the stream's preamble has arrived."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    headers = [f"Host: {host}:{port}", "Accept: text/event-stream"]
    if last_id is not None:
        headers.append(f"Last-Event-ID: {last_id}")
    request = f"GET {parts.path}?{urlencode(params)} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: SseClient(receiver, stream, request.encode()),
        host,
        port,
        local_addr=None if source is None else (source, 0),
    )
    try:
        await client.ready
    except BaseException:
        client.close()
        raise
    return client
