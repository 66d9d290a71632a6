"""Login sessions: tokens that name a session, expire, are renewed while used, and end.

A token is random (`s1.` and 43 URL-safe characters); the database knows the session by an HMAC
of it with CHAT_SECRET, so neither a copy of the table nor the broker's messages hold a usable
token, and a new secret ends every session. A session lives CHAT_SESSION_DAYS from its last
renewal; using it renews it, at most once a RENEW_EVERY per session and process, so requests do
not write every time.

Each process caches the sessions it has seen, for CACHE_SECONDS at most. Ending a session (logout,
the admin ending a user's sessions, a login pushing out the oldest) goes through the broker to
every process, which drops it from its cache and closes the streams it opened; the cache's short
life bounds what a message lost while Redis was away can leave behind, and a resync forgets all.
Invariant: a cached session was live in the database less than CACHE_SECONDS ago and has not
been announced as ended since.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from .broker import Broker
from .errors import Unavailable
from .hub import Subscriber
from .models import User
from .settings import Settings
from .store import Store
from .store.base import BoundedCache

TOKEN_PREFIX = "s1."
# A token is the prefix and 32 random bytes in URL-safe base64; anything much longer is not one.
MAX_TOKEN_CHARS = 100
RENEW_EVERY = 24 * 3600
CACHE_SECONDS = 30.0
# Sessions cached per process: room for every client of a busy process (an entry is small).
CACHE_SIZE = 50_000
# One-time login links the admin makes are valid this long.
LINK_SECONDS = 15 * 60


@dataclass(frozen=True, slots=True)
class Session:
    key: str  # HMAC of the token: what the database and the broker know it by
    user_id: int
    expires_at: int  # Unix seconds


class Sessions:
    def __init__(self, settings: Settings, store: Store, broker: Broker) -> None:
        self.secret = settings.secret.encode()
        self.lifetime = round(settings.session_days * 86_400)
        self.store = store
        self.broker = broker
        self.clock = time.time  # the wall clock, as the expiries stored are; tests move it
        self._cache: BoundedCache[str, tuple[Session, float]] = BoundedCache(CACHE_SIZE)
        # Sessions announced as ended lately: a stream still setting up for one is closed.
        self._ended: BoundedCache[str, bool] = BoundedCache()
        self._streams: dict[str, set[Subscriber]] = {}
        broker.session_listeners.append(self.forget)

    def now(self) -> int:
        return int(self.clock())

    def key_of(self, secret_text: str) -> str | None:
        """The HMAC a token (or link code) is stored under; None for what cannot be one."""
        if not secret_text.isascii() or len(secret_text) > MAX_TOKEN_CHARS:
            return None
        return hmac.new(self.secret, secret_text.encode(), hashlib.sha256).hexdigest()

    # -- sessions ------------------------------------------------------------------

    async def start(self, user: User) -> tuple[str, Session]:
        """A new session of the user, and its token (which only the client keeps)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = self.key_of(token)
        assert key is not None
        now = self.now()
        session = Session(key, user.id, now + self.lifetime)
        pushed_out = await self.store.sessions.add(key, user.id, now, session.expires_at)
        if pushed_out:
            await self.broker.sessions_ended(pushed_out)
        self._cache.put(key, (session, time.monotonic()))
        return token, session

    async def find(self, token: str) -> Session | None:
        """The live session the token names (renewed if due), or None."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        key = self.key_of(token)
        if key is None:
            return None
        now = self.now()
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[1] < CACHE_SECONDS:
            session = cached[0]
        else:
            found = await self.store.sessions.find(key, now)
            if found is None:
                self._cache.discard(key)
                return None
            session = Session(key, *found)
            self._cache.put(key, (session, time.monotonic()))
        if session.expires_at <= now:
            self._cache.discard(key)
            return None
        if session.expires_at - self.lifetime + RENEW_EVERY <= now:
            renewed = Session(key, session.user_id, now + self.lifetime)
            try:
                await self.store.sessions.renew(key, renewed.expires_at)
            except Unavailable:
                return session  # still live: renewed by a later request, not refused for this
            session = renewed
            self._cache.put(key, (session, time.monotonic()))
        return session

    async def end(self, session: Session) -> None:
        await self.store.sessions.end(session.key, self.now())
        await self.broker.sessions_ended([session.key])

    async def end_all(self, user_id: int) -> int:
        """End every session of the user, on every process; how many were live."""
        keys = await self.store.sessions.end_all(user_id, self.now())
        if keys:
            await self.broker.sessions_ended(keys)
        return len(keys)

    def forget(self, keys: list[str] | None) -> None:
        """These sessions ended (None: any may have): drop them here and close their streams."""
        if keys is None:
            self._cache.clear()
            return  # the resync that says so ends every stream anyway
        for key in keys:
            self._cache.discard(key)
            self._ended.put(key, True)
            for sub in self._streams.pop(key, ()):
                sub.close()

    def streaming(
        self, session: Session | None, sub: Subscriber
    ) -> contextlib.AbstractAsyncContextManager[object]:
        """`async with`: while the block runs, the stream ends when its session does."""
        return _UNTRACKED if session is None else _Tracked(self, session.key, sub)

    def _track(self, key: str, sub: Subscriber) -> None:
        self._streams.setdefault(key, set()).add(sub)
        if self._ended.get(key):
            sub.close()  # it ended while the stream was being set up

    def _untrack(self, key: str, sub: Subscriber) -> None:
        subs = self._streams.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._streams[key]

    # -- login links ---------------------------------------------------------------

    async def new_link(self, user: User) -> tuple[str, int]:
        """A one-time login code for the user, and when it expires."""
        code = secrets.token_urlsafe(24)
        key = self.key_of(code)
        assert key is not None
        expires_at = self.now() + LINK_SECONDS
        await self.store.sessions.add_link(key, user.id, expires_at)
        return code, expires_at

    async def use_link(self, code: str, user_id: int | None = None) -> int | None:
        """The user id the code is for (if given, only when it is for `user_id`), the first time
        it is used within its validity."""
        key = self.key_of(code)
        return None if key is None else await self.store.sessions.use_link(key, self.now(), user_id)


class _Tracked:
    """A stream registered under its session (a plain class: thousands stay open)."""

    __slots__ = ("key", "sessions", "sub")

    def __init__(self, sessions: Sessions, key: str, sub: Subscriber) -> None:
        self.sessions = sessions
        self.key = key
        self.sub = sub

    async def __aenter__(self) -> None:
        self.sessions._track(self.key, self.sub)

    async def __aexit__(self, *exc_info: object) -> None:
        self.sessions._untrack(self.key, self.sub)


_UNTRACKED: contextlib.AbstractAsyncContextManager[object] = contextlib.nullcontext()

sessions_key = web.AppKey("sessions", Sessions)
# The session that identified this request, if one did (the stream handler ties itself to it).
request_session_key = web.RequestKey("session", Session)
