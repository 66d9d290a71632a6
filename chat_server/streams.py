"""GET /api/stream: Server-Sent Events for one chat, or for every chat of one user.

Order of work on connect (no gap, no duplicate): subscribe to the hub first, so live events
buffer; read the missed messages from the database up to the hub's released id; write them;
then write live events, which all have larger ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web

from .api import readable_chat
from .auth import current_user, optional_user
from .histogram import Histogram
from .hub import Subscriber, hub_key
from .limits import limits_key
from .models import Message, User
from .presence import presence_key
from .sessions import request_session_key, sessions_key
from .settings import settings_key
from .sse import HEADERS, PREAMBLE, encode_event
from .store import store_key
from .validation import int_value

# A write that cannot finish in this time means the peer stopped reading: drop it.
WRITE_TIMEOUT = 30.0


async def stream(request: web.Request) -> web.StreamResponse:
    last_id = _last_event_id(request)
    hub = request.app[hub_key]
    if "chat_id" in request.query:
        chat = await readable_chat(request, int_value(request.query["chat_id"], "chat_id"))
        viewer = await optional_user(request)
        chat_ids, user_id = [chat.id], None
    else:
        # Every chat of the viewer, routed by user in the hub: nothing here grows with their chats.
        viewer = await current_user(request)
        chat_ids, user_id = [], viewer.id
    if request.method == "HEAD":
        # The headers a GET would get, and no stream: nothing is subscribed, nothing held open.
        return web.Response(headers=HEADERS)

    async with (
        request.app[limits_key].stream(request, viewer.id if viewer else None),
        request.app[presence_key].online_while(viewer),
        hub.subscribe(chat_ids, user_id) as sub,
        request.app[sessions_key].streaming(request.get(request_session_key), sub),
    ):
        upto = hub.released_id
        # A client that comes from another process may be ahead of this one's watermark: it has
        # everything up to its Last-Event-ID, so nothing up to there is sent again.
        sub.start_live(max(upto, last_id or 0))
        first = [PREAMBLE]
        if last_id is not None and last_id < upto:
            first.extend(await _replay(request, sub, viewer, last_id, upto))
        response = web.StreamResponse(headers=HEADERS)
        await response.prepare(request)
        # HTTP/1.1 streams are chunked; an HTTP/1.0 client gets the bare frames.
        sub.attach(request.transport, chunked=response.headers.get("Transfer-Encoding") == "chunked")
        with contextlib.suppress(ConnectionResetError):
            await _write(response, sub, b"".join(first))
            await _pump(response, sub, hub.stats.write_latency)
    return response


async def _replay(
    request: web.Request, sub: Subscriber, viewer: User | None, last_id: int, upto: int
) -> list[bytes]:
    limit, store = request.app[settings_key].replay_limit, request.app[store_key]
    missed: list[Message] | None
    if sub.user_id is not None and viewer is not None:
        missed = await store.replay_for_user(viewer, last_id, upto, limit + 1)
    else:
        missed = await store.messages_since(sub.chats, last_id, upto, limit + 1)
    if missed is None or len(missed) > limit:
        # Too far behind to replay: the client reloads its history over REST.
        return [encode_event("reset", {"last_id": upto}, event_id=upto)]
    request.app[hub_key].stats.replayed += len(missed)
    return [encode_event("message", m.to_json(), event_id=m.id) for m in missed]


async def _pump(response: web.StreamResponse, sub: Subscriber, latency: Histogram) -> None:
    """Write what the hub could not write directly, until closed or overflowed. (While the
    stream is caught up, the hub writes events and heartbeats to the socket itself.)"""
    while True:
        batch = await sub.next_batch()
        if sub.overflowed:
            return
        if batch:
            await _write(response, sub, b"".join(e.frame for e in batch))
            written = time.monotonic()
            for event in batch:
                latency.observe(written - event.born)
        elif sub.closed:
            await response.write_eof()
            return


async def _write(response: web.StreamResponse, sub: Subscriber, data: bytes) -> None:
    try:
        async with asyncio.timeout(WRITE_TIMEOUT):
            await response.write(data)
    except TimeoutError:
        # Aborted, not closed: closing would wait to flush to a peer that reads nothing, and
        # aiohttp's end of the response would block on it again.
        sub.abort()
        raise ConnectionResetError("peer stopped reading") from None


def _last_event_id(request: web.Request) -> int | None:
    """Last-Event-ID (the browser's own reconnects) or ?last_event_id= (a first connect)."""
    raw = request.headers.get("Last-Event-ID", request.query.get("last_event_id"))
    if raw is None or raw.strip() == "":
        return None
    return int_value(raw, "Last-Event-ID", minimum=0)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/stream", stream)
