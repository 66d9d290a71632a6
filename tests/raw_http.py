"""HTTP/1.1 requests written byte for byte on a real socket: aiohttp's client (and requests)
refuse or re-encode the bytes these tests must send (Latin-1 header values, raw bytes)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

from chat_server import jsonutil

from .chat_client import WAIT

Headers = list[tuple[bytes, bytes]]


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def media_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def json(self) -> Any:
        return jsonutil.loads(self.body)

    def is_json_error(self) -> bool:
        """A 4xx whose body is the API's error envelope."""
        if not 400 <= self.status < 500 or self.media_type != "application/json":
            return False
        body = self.json()
        return isinstance(body, dict) and isinstance(body.get("error"), str)


def encode_request(method: bytes, target: bytes, headers: Headers, body: bytes = b"") -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if body or method == b"POST":
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def send(port: int, request: bytes) -> RawResponse:
    """Send one request on a fresh connection and read the whole answer (Connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
    return parse_response(raw)


def send_blocking(port: int, request: bytes) -> RawResponse:
    """`send` for code without an event loop (Hypothesis tests)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return parse_response(b"".join(chunks))


def parse_response(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), headers, body)


async def request(
    port: int, method: str, target: bytes, headers: Headers | None = None, body: bytes = b""
) -> RawResponse:
    return await send(port, encode_request(method.encode(), target, headers or [], body))
