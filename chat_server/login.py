"""Logging in and out, still without passwords (except the admin's), and who may take a name.

Every login gives a new session, or renews the one the client already holds for that user.

- CHAT_AUTH=username (the seed's way): a name is whoever types it.
- CHAT_AUTH=strict: a name belongs to the first client that logs in with it. Logging in with a
  taken name needs one of: a live session of that user (token or cookie) in the request; a
  one-time login code the admin made (`login_code`, POST /api/users/{id}/login-link); or, with
  CHAT_IDENTITY_SECRET, `user_hash` = hex HMAC-SHA256(secret, username) from the host site.
  Otherwise 409. A name nobody ever logged in with (made by posting in username mode, or by the
  seed's SQL) is not taken yet.
- The admin, with CHAT_ADMIN_PASSWORD set, needs the password, always; nothing replaces it.

Failed logins (401, 409) count against the client address, per name and in all; a success
refunds its count, so the limits stop guessing from one address and never the right answer from
another (limits.Limits.login_attempt).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .auth import (
    check_admin_password,
    clear_login_cookie,
    current_user,
    presented_session,
    set_login_cookie,
    user_by_name,
)
from .errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from .jsonutil import json_response
from .limits import limits_key
from .models import User, lima_iso
from .sessions import Session, request_session_key, sessions_key
from .settings import settings_key
from .store import store_key
from .validation import clean_username, int_value, read_body

TAKEN = "this name is taken: choose another, or ask the admin for a login link"


async def login(request: web.Request) -> web.Response:
    body = await read_body(request)
    code = body.get("login_code")
    named = body.get("username", request.query.get("username"))
    held = await presented_session(request)
    if code is not None:
        user, created = await _by_link(request, code, named), False
    else:
        username = clean_username(named)
        existing = await request.app[store_key].get_user(username=username)
        async with request.app[limits_key].login_attempt(request, existing.id if existing else None):
            user, created = await _admit(request, body, username, existing, held)
    if not created:
        # Made without a login (the server's admin account, seeded or migrated users): their
        # General starts read at their first login, not at 99+ of history.
        await request.app[store_key].start_reading_general(user)
    if held is not None and held[1].user_id == user.id:
        token = held[0]  # this client's own session of the user, renewed by finding it
    else:
        token, _ = await request.app[sessions_key].start(user)
    response = json_response({"user": user.to_json(), "token": token}, status=201 if created else 200)
    set_login_cookie(request, response, token)
    return response


async def _admit(
    request: web.Request,
    body: dict[str, Any],
    username: str,
    existing: User | None,
    held: tuple[str, Session] | None,
) -> tuple[User, bool]:
    """The user this login may be, and whether it was created; 401 or 409 if it may not."""
    settings = request.app[settings_key]
    if existing is not None and existing.is_admin and settings.admin_password:
        check_admin_password(request, body.get("password"))
        return existing, False
    if body.get("user_hash") is not None:
        _check_user_hash(settings.identity_secret, username, body["user_hash"])
        return await user_by_name(request, username)
    if existing is None:
        user, created = await user_by_name(request, username)
        if created:
            return user, True
        existing = user  # made by a concurrent request a moment ago: taken by that one
    if settings.auth_mode == "username":
        return existing, False
    if held is not None and held[1].user_id == existing.id:
        return existing, False
    if not await request.app[store_key].sessions.claimed(existing.id):
        return existing, False
    raise Conflict(TAKEN, username=existing.username)


def _check_user_hash(secret: str | None, username: str, given: Any) -> None:
    """user_hash = hex HMAC-SHA256(CHAT_IDENTITY_SECRET, username), compared in constant time."""
    if secret is None:
        raise BadRequest("user_hash is not accepted here: CHAT_IDENTITY_SECRET is not set", field="user_hash")
    if not isinstance(given, str):
        raise BadRequest("user_hash must be a string", field="user_hash")
    expected = hmac.new(secret.encode(), username.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode("utf-8", "replace")):
        raise Unauthorized("user_hash does not match the username")


async def _by_link(request: web.Request, code: Any, named: Any) -> User:
    """The user of a one-time login code (used up by this call; with a `username`, only if the
    code is for that user); 401 when it is not valid."""
    if not isinstance(code, str):
        raise BadRequest("login_code must be a string", field="login_code")
    store = request.app[store_key]
    async with request.app[limits_key].login_attempt(request, None):
        for_user = None if named is None else await store.get_user(username=clean_username(named))
        if named is not None and for_user is None:
            user_id = None  # a name that is no one's: no link is for it
        else:
            user_id = await request.app[sessions_key].use_link(
                code.strip(), for_user.id if for_user else None
            )
        user = None if user_id is None else await store.get_user(user_id=user_id)
        if user is None:
            raise Unauthorized(
                "this login link is not valid: it was used, has expired, is for someone else or never existed"
            )
        if user.is_admin and request.app[settings_key].admin_password:
            raise Unauthorized("the admin logs in with the password")  # a link made before it was set
    return user


async def logout(request: web.Request) -> web.Response:
    """Ends the session the request carries (token or cookie), on every process, with its streams."""
    held = await presented_session(request)
    if held is not None:
        await request.app[sessions_key].end(held[1])
    response = json_response({"ok": True})
    clear_login_cookie(response)
    return response


async def create_login_link(request: web.Request) -> web.Response:
    """POST /api/users/{user_id}/login-link (the admin): a one-time login for a user who changed device."""
    await _require_admin(request)
    user = await _target_user(request)
    if user.is_admin and request.app[settings_key].admin_password:
        raise BadRequest("the admin logs in with the password")
    code, expires = await request.app[sessions_key].new_link(user)
    expires_at = datetime.fromtimestamp(expires, UTC)
    url = request.url.with_path("/").with_query(login_code=code)
    return json_response(
        {"user": user.to_json(), "code": code, "url": str(url), "expires_at": lima_iso(expires_at)},
        status=201,
    )


async def end_sessions(request: web.Request) -> web.Response:
    """DELETE /api/users/{user_id}/sessions: the admin, or the user, ends all the user's sessions."""
    caller = await current_user(request)
    user = await _target_user(request)
    if caller.id != user.id and not caller.is_admin:
        raise Forbidden("only the admin ends another user's sessions")
    ended = await request.app[sessions_key].end_all(user.id)
    response = json_response({"user": user.to_json(), "ended": ended})
    if request.get(request_session_key) is not None and caller.id == user.id:
        clear_login_cookie(response)
    return response


async def _require_admin(request: web.Request) -> None:
    if not (await current_user(request)).is_admin:
        raise Forbidden("only the admin may do this")


async def _target_user(request: web.Request) -> User:
    user_id = int_value(request.match_info["user_id"], "user_id")
    user = await request.app[store_key].get_user(user_id=user_id)
    if user is None:
        raise NotFound("unknown user", user_id=user_id)
    return user


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/logout", logout)
    app.router.add_post("/api/users/{user_id}/login-link", create_login_link)
    app.router.add_delete("/api/users/{user_id}/sessions", end_sessions)
