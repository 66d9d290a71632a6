"""The new-flow HTTP API: login, chats and messages. Thin handlers over the store and the hub."""

from __future__ import annotations

import os

from aiohttp import web

from . import service
from .auth import current_user, issue_token, optional_user
from .errors import BadRequest, NotFound
from .jsonutil import json_response
from .models import Chat, Message
from .presence import presence_key
from .settings import settings_key
from .store import DEFAULT_PAGE, MAX_PAGE, store_key
from .validation import clean_username, int_value, optional_int, read_body, required_text


async def login(request: web.Request) -> web.Response:
    body = await read_body(request)
    username = clean_username(body.get("username", request.query.get("username")))
    user, created = await service.ensure_user(request.app, username)
    token = issue_token(request.app[settings_key].secret, user)
    return json_response({"user": user.to_json(), "token": token}, status=201 if created else 200)


async def me(request: web.Request) -> web.Response:
    user = await current_user(request)
    return json_response({"user": user.to_json()})


async def logout(request: web.Request) -> web.Response:
    # Stateless: the client forgets its token.
    return json_response({"ok": True})


async def list_chats(request: web.Request) -> web.Response:
    user = await current_user(request)
    chats = await request.app[store_key].list_chats(user)
    online = await request.app[presence_key].online({p.id for c in chats for p in c.participants})
    return json_response({"chats": [c.to_json(online) for c in chats]})


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
    """The chat, if the caller may read it (identity is optional for General)."""
    chat = await request.app[store_key].get_chat(chat_id)
    if chat is None:
        raise NotFound("unknown chat", chat_id=chat_id)
    if not chat.is_general:
        service.require_member(chat, await optional_user(request))
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
    before_id = optional_int(query, "before_id")
    limit = optional_int(query, "limit", maximum=MAX_PAGE) or DEFAULT_PAGE
    return await request.app[store_key].list_messages(
        chat.id, after_id=after_id, before_id=before_id, limit=limit
    )


async def post_message(request: web.Request) -> web.Response:
    body = await read_body(request)
    if body.get("chat_id") is None:
        raise BadRequest("chat_id is required", field="chat_id")
    chat_id = int_value(body["chat_id"], "chat_id")
    contenido = required_text(body, "contenido", request.app[settings_key].max_message_chars)
    chat = await request.app[store_key].get_chat(chat_id)
    if chat is None:
        raise NotFound("unknown chat", chat_id=chat_id)
    sender = await current_user(request, body, create=True)
    service.require_member(chat, sender)
    message = await service.post_message(request.app, chat, sender, contenido)
    return json_response({"message": message.to_json()}, status=201)


async def healthz(request: web.Request) -> web.Response:
    await request.app[store_key].ping()
    # The pid tells workers sharing a port apart.
    return json_response({"status": "ok", "pid": os.getpid()})


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/login", login)
    app.router.add_get("/api/me", me)
    app.router.add_post("/api/logout", logout)
    app.router.add_get("/api/chats", list_chats)
    app.router.add_post("/api/chats/dm", create_dm)
    app.router.add_post("/api/messages", post_message)
    # GET /api/messages belongs to the legacy module, which hands chat_id queries to list_messages.
    app.router.add_get("/healthz", healthz)
