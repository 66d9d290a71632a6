"""Operations that touch both the store and the hub, shared by the new API and the legacy module."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

from .broker import broker_key
from .errors import BadRequest, Forbidden, Unauthorized, Unavailable
from .models import ADMIN_USERNAME, Chat, Message, ReadMarker, User
from .names import refuse_new_name
from .store import store_key

T = TypeVar("T")
# Strong references to shielded work, so a task outliving its request is not collected.
_shielded: set[asyncio.Task[Any]] = set()


async def ensure_user(app: web.Application, username: str) -> tuple[User, bool]:
    """The user by name, created on first use together with their DM with admin. Only a name
    that is no one's yet must pass the rules for new names (an existing user keeps theirs)."""
    if await app[store_key].get_user(username=username) is None:
        refuse_new_name(username)
        if await app[store_key].looks_taken(username):
            raise BadRequest("username looks like the name of another user", field="username")
    user, created = await app[store_key].ensure_user(username)
    if created:
        await app[store_key].start_reading_general(user)
    if created and not user.is_admin:
        admin = await app[store_key].get_user(username=ADMIN_USERNAME)
        if admin is not None:
            await open_dm(app, admin, user)
    return user, created


async def open_dm(app: web.Application, a: User, b: User) -> tuple[Chat, bool]:
    if a.id == b.id:
        raise BadRequest("a direct message chat needs two different users")
    chat, created = await app[store_key].get_or_create_dm(a, b)
    if created:
        await app[broker_key].chat_created(chat)
    return chat, created


async def post_message(app: web.Application, chat: Chat, sender: User, contenido: str) -> Message:
    """Store, then publish once committed. A client that hangs up mid-way does not cancel it:
    a stored message must reach its subscribers."""

    async def store_and_publish() -> Message:
        message = await app[store_key].add_message(chat.id, sender, contenido)
        await app[broker_key].message_stored(message)
        return message

    return await _shield(store_and_publish())


async def mark_read(app: web.Application, chat: Chat, user: User, last_read_id: int) -> ReadMarker:
    """Move the user's read marker; when it moved, the user's other tabs hear of it (even if
    the client hangs up mid-way)."""

    async def store_and_publish() -> ReadMarker:
        marker, moved = await app[store_key].mark_read(chat.id, user, last_read_id)
        if moved:
            await app[broker_key].chat_read(user.id, marker.to_json(), partners(chat, user))
        return marker

    return await _shield(store_and_publish())


async def announce_typing(app: web.Application, chat: Chat, user: User) -> bool:
    """Tell a DM's partner that the user is typing; whether anyone was to be told."""
    others = partners(chat, user)
    if others:
        typing = {"chat_id": chat.id, "user_id": user.id, "username": user.username}
        await app[broker_key].typing(typing, others)
    return bool(others)


def partners(chat: Chat, user: User) -> list[int]:
    """Who hears of the user's typing and read markers in the chat: a DM's other participant.
    Nobody in General, which is everyone: each event would cost O(users) (as with presence)."""
    return [] if chat.is_general else [p.id for p in chat.participants if p.id != user.id]


async def announce_presence(app: web.Application, user_id: int, online: bool) -> None:
    """Tell the user's DM partners (General is everyone: not told, to stay O(partners)). The
    admin has a DM with every user, so the admin's partners are everyone, and are not listed."""
    store = app[store_key]
    try:
        user = await store.get_user(user_id=user_id)
        if user is None:
            return
        partners = None if user.is_admin else await store.dm_partners(user)
    except Unavailable:
        return  # presence is best effort; the chat list shows the truth on the next read
    change = {"user_id": user.id, "username": user.username, "online": online}
    await app[broker_key].presence_changed(change, partners)


def require_member(chat: Chat, user: User | None) -> None:
    """General is open to everyone; a DM only to its participants."""
    if chat.is_general:
        return
    if user is None:
        raise Unauthorized("identity required for a direct message chat")
    if not chat.has_member(user.id):
        raise Forbidden("not a participant of this chat", chat_id=chat.id)


async def _shield(coro: Coroutine[Any, Any, T]) -> T:
    task = asyncio.ensure_future(coro)
    _shielded.add(task)
    task.add_done_callback(_shielded.discard)
    return await asyncio.shield(task)
