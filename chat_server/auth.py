"""Who is calling: signed tokens (header, query or login cookie) and the seed's bare usernames.

In order: a token in the request (Authorization: Bearer, or ?token= for EventSource); then, with
CHAT_AUTH=username, a bare username (X-Username, ?username=, body `username`); then the login
cookie. What the request itself names wins over the cookie, which the browser adds on its own.
With CHAT_AUTH=strict a bare username identifies no one: without a token or cookie it is a 401.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from yarl import URL

from . import service
from .errors import Forbidden, NotFound, Unauthorized
from .models import User
from .settings import settings_key
from .store import store_key
from .validation import clean_username

TOKEN_PREFIX = "v1"
COOKIE_NAME = "chat_token"
# How long a browser keeps the login cookie (the token in it does not expire by itself).
COOKIE_MAX_AGE = 30 * 24 * 3600
STRICT_REFUSAL = "a bare username is not accepted here: log in and send the token or the login cookie"


def issue_token(secret: str, user: User) -> str:
    """A stateless token: the user id, signed. Nothing is stored on the server."""
    payload = f"{TOKEN_PREFIX}.{user.id}"
    return f"{payload}.{_sign(secret, payload)}"


def read_token(secret: str, token: str) -> int | None:
    """The user id in a valid token, else None."""
    if not token.isascii():  # ours are; and compare_digest refuses other text
        return None
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
    """Who the request says it is (see the module's docstring for the order); None if no one."""
    settings = request.app[settings_key]
    authorization = request.headers.get("Authorization", "")
    bearer = authorization[:7].lower() == "bearer "
    token = authorization[7:].strip() if bearer else request.query.get("token")
    if token is not None:
        user_id = read_token(settings.secret, token)
        if user_id is None:
            raise Unauthorized("invalid token")
        return Identity(user_id=user_id)
    bare = next(
        (
            value
            for value in (
                request.headers.get("X-Username"),
                request.query.get("username"),
                (body or {}).get("username"),
            )
            if value is not None
        ),
        None,
    )
    if bare is not None and settings.auth_mode == "username":
        return Identity(username=clean_username(bare))
    # A cookie the secret no longer verifies (say, after a restart) identifies no one.
    cookie_user = read_token(settings.secret, request.cookies.get(COOKIE_NAME, ""))
    if cookie_user is not None:
        _refuse_foreign_origin(request)
        return Identity(user_id=cookie_user)
    if bare is not None:
        raise Unauthorized(STRICT_REFUSAL)
    return None


def _refuse_foreign_origin(request: web.Request) -> None:
    """The cookie rides along on any request the browser makes: a POST it carries must come
    from a page of this server or of a listed origin (SameSite=Lax already stops other sites)."""
    origin = request.headers.get("Origin")
    if request.method in ("GET", "HEAD", "OPTIONS") or origin is None:
        return
    if _same_origin(origin, request) or origin in request.app[settings_key].cors_origins:
        return
    raise Forbidden("the login cookie is not accepted from this origin", origin=origin)


def _same_origin(origin: str, request: web.Request) -> bool:
    """Scheme, host and port all equal (a default port written or not); behind a trusted
    proxy the request's scheme is the client's."""
    try:
        theirs = URL(origin)
        ours = URL.build(scheme=request.scheme, authority=request.host)
        return bool(theirs.host) and (theirs.scheme, theirs.host, theirs.port) == (
            ours.scheme,
            ours.host,
            ours.port,
        )
    except ValueError:  # not a URL at all
        return False


def set_login_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=COOKIE_MAX_AGE,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=request.secure or None,
    )


def clear_login_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE_NAME, path="/", httponly=True, samesite="Lax")


def check_admin_password(request: web.Request, given: Any) -> None:
    """With CHAT_ADMIN_PASSWORD set, logging in as admin needs it (compared in constant time)."""
    expected = request.app[settings_key].admin_password
    if expected is None:
        return
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("wrong or missing password")


async def current_user(
    request: web.Request, body: dict[str, Any] | None = None, *, create: bool = False
) -> User:
    """The caller as a stored user: 401 without identity, 404 when unknown (unless `create`)."""
    who = identify(request, body)
    if who is None:
        raise Unauthorized("identity required: log in (or, unless CHAT_AUTH=strict, send X-Username)")
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
    if user.is_admin and who.username is not None and request.app[settings_key].admin_password:
        raise Unauthorized("admin has a password: log in, then send the token or the login cookie")
    return user
