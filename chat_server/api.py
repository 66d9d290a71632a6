"""The new-flow HTTP API: login, chats and messages. Thin handlers over the store and the hub."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Mapping
from typing import Any

from aiohttp import web

from . import service
from .auth import current_user, identify, resolve
from .broker import broker_key
from .errors import BadRequest, NotFound, Unavailable
from .jsonutil import json_response
from .keeper import keeper_key
from .limits import limits_key
from .models import Chat, InboxPosition, Message, User
from .presence import presence_key
from .settings import settings_key
from .store import DEFAULT_CHATS_PAGE, DEFAULT_PAGE, MAX_PAGE, store_key
from .validation import (
    MAX_ID,
    clean_username,
    int_value,
    optional_int,
    read_body,
    required_int,
    required_text,
    search_text,
    search_words,
)

# /readyz waits this long for each dependency before calling it unavailable.
READY_TIMEOUT = 2.0


async def me(request: web.Request) -> web.Response:
    user = await current_user(request)
    return json_response({"user": user.to_json()})


async def list_chats(request: web.Request) -> web.Response:
    """A page of the caller's chats (General first, then DMs by latest activity), or with `q`
    the DMs whose other participant's name starts with it."""
    user = await current_user(request)
    store, query = request.app[store_key], request.query
    limit = optional_int(query, "limit", maximum=MAX_PAGE) or DEFAULT_CHATS_PAGE
    following: InboxPosition | None = None
    if "q" in query:
        chats = await store.find_chats_by_name(user, search_text(query, "q"), limit)
    else:
        chats, following = await store.inbox_page(user, limit, _inbox_cursor(query))
    online = await request.app[presence_key].online({p.id for c in chats for p in c.participants})
    return json_response(
        {
            "chats": [c.to_json(online) for c in chats],
            "next_cursor": following.token() if following else None,
        }
    )


def _inbox_cursor(query: Mapping[str, str]) -> InboxPosition | None:
    cursor = query.get("cursor")
    if cursor is None:
        return None
    try:
        return InboxPosition.from_token(cursor)
    except ValueError:
        raise BadRequest("cursor is not one this server gave", field="cursor") from None


async def search_messages(request: web.Request) -> web.Response:
    """GET /api/search?q=&chat_id=&cursor=: messages with every word of `q`, newest first, in
    the chats the caller may read (or in `chat_id`)."""
    user = await current_user(request)
    query = request.query
    words = search_words(search_text(query, "q"))
    chat_id = optional_int(query, "chat_id")
    if chat_id is not None:
        chat = await request.app[store_key].get_chat(chat_id)
        if chat is None:
            raise NotFound("unknown chat", chat_id=chat_id)
        service.require_member(chat, user)
    limit = optional_int(query, "limit", maximum=MAX_PAGE) or DEFAULT_PAGE
    before_id = optional_int(query, "cursor")
    found = await request.app[store_key].search_messages(user, words, chat_id, before_id, limit + 1)
    page = found[:limit]
    following = str(page[-1].id) if len(found) > limit else None
    return json_response({"messages": [m.to_json() for m in page], "next_cursor": following})


async def create_dm(request: web.Request) -> web.Response:
    body = await read_body(request)
    user = await current_user(request, body)
    other_name = clean_username(body.get("with_username"), "with_username")
    other = await request.app[store_key].get_user(username=other_name)
    if other is None:
        raise NotFound("unknown user", username=other_name)
    chat, created = await service.open_dm(request.app, user, other)
    return json_response({"chat": chat.to_json()}, status=201 if created else 200)


async def readable_chat(request: web.Request, chat_id: int) -> Chat:
    """The chat, if the caller may read it (identity is optional for General, but a bare
    username is refused even there with CHAT_AUTH=strict)."""
    who = await identify(request)
    chat = await request.app[store_key].get_chat(chat_id)
    if chat is None:
        raise NotFound("unknown chat", chat_id=chat_id)
    if not chat.is_general:
        service.require_member(chat, None if who is None else await resolve(request, who))
    return chat


async def list_messages(request: web.Request) -> web.Response:
    chat_id = int_value(request.query.get("chat_id"), "chat_id")
    chat = await readable_chat(request, chat_id)
    messages = await history_page(request, chat)
    return json_response({"chat_id": chat.id, "messages": [m.to_json() for m in messages]})


async def history_page(request: web.Request, chat: Chat) -> list[Message]:
    """The latest page, the page after `after_id` (polling) or before `before_id` (paging back)."""
    query = request.query
    after_id = optional_int(query, "after_id", minimum=0)
    # Copied legacy messages have ids below 0 (migrate_legacy): paging back reaches them.
    before_id = optional_int(query, "before_id", minimum=-MAX_ID)
    limit = optional_int(query, "limit", maximum=MAX_PAGE) or DEFAULT_PAGE
    return await request.app[store_key].list_messages(
        chat.id, after_id=after_id, before_id=before_id, limit=limit
    )


async def post_message(request: web.Request) -> web.Response:
    app = request.app  # a property that walks the match info: the hottest route asks once
    await app[limits_key].address_posts(request)
    body = await read_body(request)
    chat_id = required_int(body, "chat_id")
    contenido = required_text(body, "contenido", app[settings_key].max_message_chars)
    chat = await app[store_key].get_chat(chat_id)
    if chat is None:
        raise NotFound("unknown chat", chat_id=chat_id)
    sender = await current_user(request, body, create=True)
    service.require_member(chat, sender)
    await app[limits_key].user_posts(sender.id)
    message = await service.post_message(app, chat, sender, contenido)
    return json_response({"message": message.to_json()}, status=201)


async def mark_read(request: web.Request) -> web.Response:
    """POST /api/chats/{chat_id}/read {last_read_id}: how far the caller has read the chat."""
    chat_id = int_value(request.match_info["chat_id"], "chat_id")
    body = await read_body(request)
    last_read_id = required_int(body, "last_read_id", minimum=0)
    chat, user = await member_chat(request, chat_id, body)
    marker = await service.mark_read(request.app, chat, user, last_read_id)
    return json_response(marker.to_json())


async def member_chat(request: web.Request, chat_id: int, body: dict[str, Any]) -> tuple[Chat, User]:
    """The chat and the caller, who must take part in it."""
    user = await current_user(request, body)
    chat = await request.app[store_key].get_chat(chat_id)
    if chat is None:
        raise NotFound("unknown chat", chat_id=chat_id)
    service.require_member(chat, user)
    return chat, user


async def typing(request: web.Request) -> web.Response:
    """POST /api/chats/{chat_id}/typing: the caller is typing now. Not stored; a DM's partner
    gets `event: typing` (General's many readers are not told)."""
    chat_id = int_value(request.match_info["chat_id"], "chat_id")
    chat, user = await member_chat(request, chat_id, await read_body(request))
    await request.app[limits_key].user_typing(user.id)
    announced = await service.announce_typing(request.app, chat, user)
    return json_response({"chat_id": chat.id, "announced": announced})


async def healthz(request: web.Request) -> web.Response:
    await request.app[store_key].ping()
    # The pid tells workers sharing a port apart.
    return json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic: the store and the broker (Redis, when used) both answer, and no
    background task is down (waiting to be restarted after a failure)."""
    store, broker = request.app[store_key], request.app[broker_key]
    store_ok, broker_ok = await asyncio.gather(_answers(store.ping()), _answers(broker.ping()))
    down = sorted(request.app[keeper_key].down)
    state = {
        "store": "ok" if store_ok else "unavailable",
        "broker": "ok" if broker_ok else "unavailable",
        "tasks": "unavailable" if down else "ok",
    }
    if not (store_ok and broker_ok) or down:
        raise Unavailable("not ready", **state, **({"down": down} if down else {}))
    return json_response({"status": "ready", "pid": os.getpid(), **state})


async def _answers(ping: Awaitable[None]) -> bool:
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await ping
    except Exception:  # whatever the failure, the dependency does not answer
        return False
    return True


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/chats", list_chats)
    app.router.add_get("/api/search", search_messages)
    app.router.add_post("/api/chats/dm", create_dm)
    app.router.add_post("/api/chats/{chat_id}/read", mark_read)
    app.router.add_post("/api/chats/{chat_id}/typing", typing)
    app.router.add_post("/api/messages", post_message)
    # GET /api/messages belongs to the legacy module, which hands chat_id queries to list_messages.
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
