"""The Server-Sent Events wire format (WHATWG HTML, "Server-sent events")."""

from __future__ import annotations

from typing import Any

from . import jsonutil

# The browser waits this long before reconnecting a dropped stream.
RETRY_MS = 3000
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # nginx would otherwise buffer the stream.
    "X-Accel-Buffering": "no",
}
PREAMBLE = f"retry: {RETRY_MS}\n\n".encode()
HEARTBEAT = b": ping\n\n"


def encode_event(event: str, data: Any, *, event_id: int | None = None) -> bytes:
    """One frame. JSON never contains a raw newline, so user text cannot forge fields."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + jsonutil.dumps(data) + b"\n\n"
