"""Who is calling: signed tokens and the seed's passwordless identities."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import service
from .errors import NotFound, Unauthorized
from .models import User
from .settings import settings_key
from .store import store_key
from .validation import clean_username

TOKEN_PREFIX = "v1"


def issue_token(secret: str, user: User) -> str:
    """A stateless token: the user id, signed. Nothing is stored on the server."""
    payload = f"{TOKEN_PREFIX}.{user.id}"
    return f"{payload}.{_sign(secret, payload)}"


def read_token(secret: str, token: str) -> int | None:
    """The user id in a valid token, else None."""
    prefix, _, rest = token.partition(".")
    user_id, _, signature = rest.partition(".")
    if prefix != TOKEN_PREFIX or not user_id.isdigit():
        return None
    if not hmac.compare_digest(signature, _sign(secret, f"{prefix}.{user_id}")):
        return None
    return int(user_id)


def _sign(secret: str, payload: str) -> str:
    digest = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True)
class Identity:
    """Who the request says it is: a verified user id, or a bare username (the seed's way)."""

    user_id: int | None = None
    username: str | None = None


def identify(request: web.Request, body: dict[str, Any] | None = None) -> Identity | None:
    """In order: Bearer token (or `token` query parameter, for EventSource, which cannot set
    headers), X-Username header, `username` query parameter, `username` body field."""
    authorization = request.headers.get("Authorization", "")
    bearer = authorization[:7].lower() == "bearer "
    token = authorization[7:].strip() if bearer else request.query.get("token")
    if token is not None:
        user_id = read_token(request.app[settings_key].secret, token)
        if user_id is None:
            raise Unauthorized("invalid token")
        return Identity(user_id=user_id)
    for value in (
        request.headers.get("X-Username"),
        request.query.get("username"),
        (body or {}).get("username"),
    ):
        if value is not None:
            return Identity(username=clean_username(value))
    return None


async def current_user(
    request: web.Request, body: dict[str, Any] | None = None, *, create: bool = False
) -> User:
    """The caller as a stored user: 401 without identity, 404 when unknown (unless `create`)."""
    who = identify(request, body)
    if who is None:
        raise Unauthorized("identity required: log in, or send X-Username or ?username=")
    return await resolve(request, who, create=create)


async def optional_user(request: web.Request, body: dict[str, Any] | None = None) -> User | None:
    who = identify(request, body)
    return None if who is None else await resolve(request, who)


async def resolve(request: web.Request, who: Identity, *, create: bool = False) -> User:
    store = request.app[store_key]
    if who.user_id is not None:
        user = await store.get_user(user_id=who.user_id)
    elif create:
        assert who.username is not None
        user, _ = await service.ensure_user(request.app, who.username)
    else:
        user = await store.get_user(username=who.username)
    if user is None:
        raise NotFound("unknown user", username=who.username)
    return user
