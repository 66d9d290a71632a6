"""GET /api/stream: Server-Sent Events for one chat, or for every chat of one user.

Order of work on connect (no gap, no duplicate): subscribe to the hub first, so live events
buffer; read the missed messages from the database up to the hub's released id; write them;
then write live events, which all have larger ids.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from .api import readable_chat
from .auth import current_user, optional_user
from .hub import Subscriber, hub_key
from .presence import presence_key
from .settings import settings_key
from .sse import HEADERS, HEARTBEAT, PREAMBLE, encode_event
from .store import store_key
from .validation import int_value

# A write that cannot finish in this time means the peer stopped reading: drop it.
WRITE_TIMEOUT = 30.0


async def stream(request: web.Request) -> web.StreamResponse:
    last_id = _last_event_id(request)
    store, hub = request.app[store_key], request.app[hub_key]
    if "chat_id" in request.query:
        chat = await readable_chat(request, int_value(request.query["chat_id"], "chat_id"))
        viewer = await optional_user(request)
        chat_ids, user_id = [chat.id], None
    else:
        viewer = await current_user(request)
        chat_ids, user_id = await store.chat_ids_of(viewer), viewer.id

    async with (
        request.app[presence_key].online_while(viewer),
        hub.subscribe(chat_ids, user_id) as sub,
    ):
        upto = sub.floor = hub.released_id
        first = [PREAMBLE]
        if last_id is not None and last_id < upto:
            first.extend(await _replay(request, sub, last_id, upto))
        response = web.StreamResponse(headers=HEADERS)
        await response.prepare(request)
        sub.transport = request.transport
        # HTTP/1.1 streams are chunked; an HTTP/1.0 client gets the bare frames.
        sub.chunked = response.headers.get("Transfer-Encoding") == "chunked"
        with contextlib.suppress(ConnectionResetError):
            await _write(response, b"".join(first))
            await _pump(request, response, sub)
    return response


async def _replay(request: web.Request, sub: Subscriber, last_id: int, upto: int) -> list[bytes]:
    limit = request.app[settings_key].replay_limit
    missed = await request.app[store_key].messages_since(sorted(sub.chats), last_id, upto, limit + 1)
    if len(missed) > limit:
        # Too far behind to replay: the client reloads its history over REST.
        return [encode_event("reset", {"last_id": upto}, event_id=upto)]
    return [encode_event("message", m.to_json(), event_id=m.id) for m in missed]


async def _pump(request: web.Request, response: web.StreamResponse, sub: Subscriber) -> None:
    """Write live events as they come, a heartbeat when idle, until closed or overflowed."""
    heartbeat = request.app[settings_key].heartbeat_seconds
    while True:
        # Once all that waited is written, the hub may write to the socket directly.
        sub.direct = True
        batch = await sub.next_batch(heartbeat)
        if sub.overflowed:
            return
        if batch:
            sub.direct = False
            await _write(response, b"".join(e.frame for e in batch))
        elif sub.closed:
            await response.write_eof()
            return
        else:
            await _write(response, HEARTBEAT)


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        async with asyncio.timeout(WRITE_TIMEOUT):
            await response.write(data)
    except TimeoutError:
        raise ConnectionResetError("peer stopped reading") from None


def _last_event_id(request: web.Request) -> int | None:
    """Last-Event-ID (the browser's own reconnects) or ?last_event_id= (a first connect)."""
    raw = request.headers.get("Last-Event-ID", request.query.get("last_event_id"))
    if raw is None or raw.strip() == "":
        return None
    return int_value(raw, "Last-Event-ID", minimum=0)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/stream", stream)
