"""Who is calling: session tokens (header, query or login cookie) and the seed's bare usernames.

In order: a token in the request (Authorization: Bearer, or ?token= for EventSource); then, with
CHAT_AUTH=username, a bare username (X-Username, ?username=, body `username`); then the login
cookie. What the request itself names wins over the cookie, which the browser adds on its own.
With CHAT_AUTH=strict a bare username identifies no one: without a token or cookie it is a 401.
A token names a login session (chat_server/sessions.py): one that ended or expired is refused.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from yarl import URL

from . import service
from .edge import cookie_values
from .errors import Forbidden, NotFound, Unauthorized
from .limits import limits_key
from .models import User
from .names import refuse_new_name
from .sessions import Session, request_session_key, sessions_key
from .settings import settings_key
from .store import store_key
from .validation import clean_username

COOKIE_NAME = "chat_token"
STRICT_REFUSAL = "a bare username is not accepted here: log in and send the token or the login cookie"


@dataclass(frozen=True)
class Identity:
    """Who the request says it is: a user of a live session, or a bare username (the seed's way)."""

    user_id: int | None = None
    username: str | None = None
    session: Session | None = None


def request_token(request: web.Request) -> str | None:
    """The token the request itself carries: `Authorization: Bearer`, else `?token=`."""
    authorization = request.headers.get("Authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return request.query.get("token")


async def identify(request: web.Request, body: dict[str, Any] | None = None) -> Identity | None:
    """Who the request says it is (see the module's docstring for the order); None if no one."""
    settings, sessions = request.app[settings_key], request.app[sessions_key]
    token = request_token(request)
    if token is not None:
        session = await sessions.find(token)
        if session is None:
            raise Unauthorized("invalid or expired token: log in again")
        return _by_session(request, session)
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
    # A cookie of a session that ended or expired (or of another secret) identifies no one.
    session = await _cookie_session(request)
    if session is not None:
        _refuse_foreign_origin(request)
        return _by_session(request, session)
    if bare is not None:
        raise Unauthorized(STRICT_REFUSAL)
    return None


async def presented_session(request: web.Request) -> tuple[str, Session] | None:
    """The live session the request carries (token or cookie) with its token, ignoring bare
    usernames; None when it carries none (an invalid one is no error here)."""
    sessions = request.app[sessions_key]
    for token in (request_token(request), *cookie_values(request, COOKIE_NAME)):
        if token:
            session = await sessions.find(token)
            if session is not None:
                return token, session
    return None


async def _cookie_session(request: web.Request) -> Session | None:
    """The live session of the first login cookie that has one (see edge.cookie_values)."""
    for cookie in cookie_values(request, COOKIE_NAME):
        session = await request.app[sessions_key].find(cookie) if cookie else None
        if session is not None:
            return session
    return None


def _by_session(request: web.Request, session: Session) -> Identity:
    request[request_session_key] = session
    return Identity(user_id=session.user_id, session=session)


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
        max_age=round(request.app[settings_key].session_days * 86_400),
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
    who = await identify(request, body)
    if who is None:
        raise Unauthorized("identity required: log in (or, unless CHAT_AUTH=strict, send X-Username)")
    return await resolve(request, who, create=create)


async def optional_user(request: web.Request, body: dict[str, Any] | None = None) -> User | None:
    who = await identify(request, body)
    return None if who is None else await resolve(request, who)


async def resolve(request: web.Request, who: Identity, *, create: bool = False) -> User:
    store = request.app[store_key]
    if who.user_id is not None:
        user = await store.get_user(user_id=who.user_id)
    elif create:
        assert who.username is not None
        user, _ = await user_by_name(request, who.username)
    else:
        user = await store.get_user(username=who.username)
    if user is None:
        raise NotFound("unknown user", username=who.username)
    if user.is_admin and who.username is not None and request.app[settings_key].admin_password:
        raise Unauthorized("admin has a password: log in, then send the token or the login cookie")
    return user


async def user_by_name(request: web.Request, username: str) -> tuple[User, bool]:
    """The user by name, created on first use (limited per client address); whether created."""
    existing = await request.app[store_key].get_user(username=username)
    if existing is not None:
        return existing, False
    refuse_new_name(username)  # a name that may not be anyone's is no sign-up to count
    return await request.app[new_users_key].sign_up(request, username)


class NewUsers:
    """Sign-ups under way in this process, by name. Invariant: at most one per name; it is
    counted once against its client's address, and any request under that name meanwhile waits
    for it. A client's burst of first posts under a new name (looked up together, none found the
    user) is one sign-up, not one each, which would spend the address's limit on one user."""

    def __init__(self) -> None:
        self._under_way: dict[str, asyncio.Task[tuple[User, bool]]] = {}

    async def sign_up(self, request: web.Request, username: str) -> tuple[User, bool]:
        task = self._under_way.get(username)
        if task is not None:
            user, _ = await asyncio.shield(task)
            return user, False  # made by the request that started it
        task = asyncio.ensure_future(_sign_up(request, username))
        self._under_way[username] = task
        task.add_done_callback(functools.partial(self._done, username))
        # Shielded: the one who started it may hang up; those waiting still get the user.
        return await asyncio.shield(task)

    def _done(self, username: str, task: asyncio.Task[tuple[User, bool]]) -> None:
        if self._under_way.get(username) is task:
            del self._under_way[username]
        if not task.cancelled():
            task.exception()  # retrieved: its callers may all have hung up


async def _sign_up(request: web.Request, username: str) -> tuple[User, bool]:
    await request.app[limits_key].signups(request)
    return await service.ensure_user(request.app, username)


new_users_key = web.AppKey("new_users", NewUsers)
