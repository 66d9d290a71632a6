"""Compatibility with the seed's older clients: every legacy name and shape lives here.

- GET /api/messages without chat_id: the General chat; with ?usuario=NAME: the DM between the
  caller and NAME, created if missing. Messages also carry the legacy fields usuario, mensaje and hora.
- POST /api/send {usuario, mensaje[, destinatario]} (JSON or form): a message in General, or in a DM.

The only other code that knows these names is the one-off copy of the legacy table,
chat_server/migrate_legacy.py. tests/test_legacy.py checks that nothing else does.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import api, service
from .auth import Identity, current_user, identify, optional_user, resolve
from .errors import BadRequest, Forbidden, NotFound, Unauthorized
from .jsonutil import json_response
from .limits import limits_key
from .models import LIMA, Message, User
from .settings import settings_key
from .store import store_key
from .validation import clean_username, read_body, required_text


def legacy_fields(message: Message) -> dict[str, Any]:
    return {
        **message.to_json(),
        "usuario": message.username,
        "mensaje": message.contenido,
        "hora": message.timestamp.astimezone(LIMA).strftime("%H:%M:%S"),
    }


async def get_messages(request: web.Request) -> web.Response:
    """GET /api/messages: the new flow when chat_id is given, else the legacy queries."""
    if "chat_id" in request.query:
        return await api.list_messages(request)
    if "usuario" in request.query:
        caller = await _legacy_caller(request)
        other = await _known_user(request, request.query["usuario"], "usuario")
        chat, _ = await service.open_dm(request.app, caller, other)
    else:
        # General needs no caller; this refuses a bare username in strict mode, and a bad token.
        await identify(request)
        chat = await request.app[store_key].general_chat()
    messages = await api.history_page(request, chat)
    return json_response({"chat_id": chat.id, "messages": [legacy_fields(m) for m in messages]})


async def send(request: web.Request) -> web.Response:
    """Every field is checked before anything is stored: a refused post creates no user."""
    await request.app[limits_key].address_posts(request)
    body = await read_body(request)
    strict = request.app[settings_key].auth_mode == "strict"
    if body.get("usuario") is None and not strict:
        raise BadRequest("usuario is required", field="usuario")
    name = None if body.get("usuario") is None else clean_username(body["usuario"], "usuario")
    text = required_text(body, "mensaje", request.app[settings_key].max_message_chars)
    other = None
    if body.get("destinatario") is not None:
        other = await _known_user(request, body["destinatario"], "destinatario")
    sender = await _sender(request, name)
    await request.app[limits_key].user_posts(sender.id)
    if other is None:
        chat = await request.app[store_key].general_chat()
    else:
        chat, _ = await service.open_dm(request.app, sender, other)
    message = await service.post_message(request.app, chat, sender, text)
    return json_response({"message": legacy_fields(message)}, status=201)


async def _sender(request: web.Request, name: str | None) -> User:
    """`usuario` names the sender, created on first use. With CHAT_AUTH=strict the token or the
    login cookie does, and `usuario`, when sent, must name that same user."""
    if name is not None and request.app[settings_key].auth_mode == "username":
        return await resolve(request, Identity(username=name), create=True)
    sender = await current_user(request)
    if name is not None:
        named = await request.app[store_key].get_user(username=name)
        if named is None or named.id != sender.id:
            raise Forbidden("usuario is not the logged-in user", field="usuario")
    return sender


async def _legacy_caller(request: web.Request) -> User:
    """The caller, identified as in the new flow (X-Username header, `username` query, or a
    token): 400 without one, as the legacy query cannot be answered (401 with CHAT_AUTH=strict);
    404 when unknown."""
    user = await optional_user(request)
    if user is None:
        if request.app[settings_key].auth_mode == "strict":
            raise Unauthorized("identity required: log in")
        raise BadRequest("username (query) or X-Username (header) is required with usuario")
    return user


async def _known_user(request: web.Request, raw: Any, field: str) -> User:
    name = clean_username(raw, field)
    user = await request.app[store_key].get_user(username=name)
    if user is None:
        raise NotFound("unknown user", field=field, username=name)
    return user


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/messages", get_messages)
    app.router.add_post("/api/send", send)
