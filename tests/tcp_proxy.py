"""A TCP proxy for fault tests, between the server and a dependency (MariaDB, Redis).

`stall()` makes every connection through it go silent while staying open, both ways: what a
network stall or a frozen host looks like, which is not a refused connection. New connections
are still accepted (the kernel completes the handshake) but hear nothing either. `resume()`
lets the held bytes through.
`silence_when(b"INSERT")` makes a connection go silent for good from the moment it sends those
bytes (one connection stalled in the middle of a statement, among healthy ones);
`silence_when(None)` stops silencing more.
`reset()` aborts every connection open now.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

CHUNK = 64 * 1024


class _Link:
    """One client connection and its upstream: silent while `flowing` is clear."""

    def __init__(self, flowing: bool) -> None:
        self.flowing = asyncio.Event()
        if flowing:
            self.flowing.set()
        self.held = 0  # pipes waiting with bytes they may not forward
        self.transports: list[asyncio.WriteTransport] = []


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.stalled = False
        self._silencing: bytes | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.reset()
        for pipe in list(self._pipes):
            pipe.cancel()
        if self._pipes:
            await asyncio.wait(self._pipes)
        await self._server.wait_closed()

    @property
    def held(self) -> int:
        """Connections with bytes held by the stall (a request in flight)."""
        return sum(1 for link in self._links if link.held)

    def stall(self) -> None:
        self.stalled = True
        for link in self._links:
            link.flowing.clear()

    def resume(self) -> None:
        self.stalled = False
        for link in self._links:
            link.flowing.set()

    def silence_when(self, marker: bytes | None) -> None:
        self._silencing = marker

    def reset(self) -> None:
        for link in list(self._links):
            for transport in link.transports:
                transport.abort()
        self._links.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            client_writer.transport.abort()  # the dependency refuses: so does the proxy
            return
        link = _Link(flowing=not self.stalled)
        link.transports = [client_writer.transport, upstream_writer.transport]
        self._links.add(link)
        for reader, writer in ((client_reader, upstream_writer), (upstream_reader, client_writer)):
            pipe = asyncio.create_task(self._pipe(link, reader, writer))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(CHUNK):
                if self._silencing is not None and self._silencing in data:
                    link.flowing.clear()
                if not link.flowing.is_set():
                    link.held += 1  # neither side hears a thing
                    try:
                        await link.flowing.wait()
                    finally:
                        link.held -= 1
                writer.write(data)
                await writer.drain()
        # One side closed (or was reset): close the other, as the network would.
        self._links.discard(link)
        for transport in link.transports:
            transport.abort()
