"""Settings, read once from the environment (twelve-factor style)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from .proxies import Network, parse_networks

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite:///data/chat.sqlite3"
AuthMode = Literal["username", "strict"]
AUTH_MODES: tuple[AuthMode, ...] = ("username", "strict")


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    # Set to share fan-out between processes (redis://host:port/db); unset means in-process.
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # Empty means any origin, without credentials (never "*" with credentials).
    cors_origins: tuple[str, ...] = ()
    max_message_chars: int = 4000
    heartbeat_seconds: float = 15.0
    # With Redis, a crashed process's users count as online at most this long.
    presence_ttl: float = 30.0
    replay_limit: int = 1000
    # Events a stream may have waiting before it counts as too slow and is disconnected.
    subscriber_buffer: int = 1000
    # Signs login tokens; a random one per start unless CHAT_SECRET is set.
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    # "username": a bare username identifies the caller (the seed); "strict": only a token or cookie.
    auth_mode: AuthMode = "username"
    # When set, logging in as admin needs it (and a bare "admin" identifies no one).
    admin_password: str | None = field(default=None, repr=False)
    # A login session ends this long after it was last used (renewed at most daily).
    session_days: float = 30.0
    # With it, a login with user_hash = hex HMAC-SHA256(secret, username) needs no other proof.
    identity_secret: str | None = field(default=None, repr=False)
    # Rate limits: at most this many per window (0 turns one off). A person typing never gets
    # near them; a script does. Behind a reverse proxy every address is the proxy's.
    rate_window: float = 60.0
    post_limit_user: int = 600
    post_limit_address: int = 3000
    login_limit_user: int = 10
    login_limit_address: int = 300
    # The page says "typing" at most every 3 s (20 a minute): room for a few tabs, not a flood.
    typing_limit_user: int = 60
    # New users per window per client address (logging in or posting under a new name).
    signup_limit_address: int = 60
    # Open streams per user, all processes together (0: no cap). A person has a few tabs.
    max_streams_per_user: int = 32
    # Open streams without a user (General read anonymously) per client address (0: no cap).
    max_streams_per_address: int = 64
    # Seconds a request body may take to arrive (a slow sender holds a connection and a handler).
    body_timeout: float = 10.0
    # Peers whose Forwarded / X-Forwarded-For / X-Forwarded-Proto headers are believed (CIDRs).
    trusted_proxies: tuple[Network, ...] = ()
    # When set, GET /metrics needs it as a Bearer token.
    metrics_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        defaults = cls()
        origins = tuple(o.strip() for o in env.get("CHAT_CORS_ORIGINS", "").split(",") if o.strip())
        settings = cls(
            database_url=env.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=env.get("REDIS_URL") or None,
            host=env.get("CHAT_HOST", defaults.host),
            port=_int(env, "CHAT_PORT", defaults.port),
            workers=_int(env, "CHAT_WORKERS", defaults.workers),
            cors_origins=origins,
            max_message_chars=_int(env, "CHAT_MAX_MESSAGE_CHARS", defaults.max_message_chars),
            heartbeat_seconds=float(env.get("CHAT_HEARTBEAT_SECONDS", defaults.heartbeat_seconds)),
            presence_ttl=float(env.get("CHAT_PRESENCE_TTL", defaults.presence_ttl)),
            replay_limit=_int(env, "CHAT_REPLAY_LIMIT", defaults.replay_limit),
            subscriber_buffer=_int(env, "CHAT_SUBSCRIBER_BUFFER", defaults.subscriber_buffer),
            secret=env.get("CHAT_SECRET") or _random_secret(defaults.secret),
            auth_mode=_auth_mode(env.get("CHAT_AUTH") or defaults.auth_mode),
            admin_password=env.get("CHAT_ADMIN_PASSWORD") or None,
            session_days=_positive_float(env, "CHAT_SESSION_DAYS", defaults.session_days),
            identity_secret=env.get("CHAT_IDENTITY_SECRET") or None,
            rate_window=_positive_float(env, "CHAT_RATE_WINDOW", defaults.rate_window),
            post_limit_user=_int(env, "CHAT_POST_LIMIT_USER", defaults.post_limit_user),
            post_limit_address=_int(env, "CHAT_POST_LIMIT_ADDRESS", defaults.post_limit_address),
            login_limit_user=_int(env, "CHAT_LOGIN_LIMIT_USER", defaults.login_limit_user),
            login_limit_address=_int(env, "CHAT_LOGIN_LIMIT_ADDRESS", defaults.login_limit_address),
            typing_limit_user=_int(env, "CHAT_TYPING_LIMIT_USER", defaults.typing_limit_user),
            signup_limit_address=_int(env, "CHAT_SIGNUP_LIMIT_ADDRESS", defaults.signup_limit_address),
            max_streams_per_user=_int(env, "CHAT_MAX_STREAMS_PER_USER", defaults.max_streams_per_user),
            max_streams_per_address=_int(
                env, "CHAT_MAX_STREAMS_PER_ADDRESS", defaults.max_streams_per_address
            ),
            body_timeout=_positive_float(env, "CHAT_BODY_TIMEOUT", defaults.body_timeout),
            trusted_proxies=parse_networks(env.get("CHAT_TRUSTED_PROXIES", "")),
            metrics_token=env.get("CHAT_METRICS_TOKEN") or None,
        )
        if settings.auth_mode == "strict" and settings.admin_password is None:
            log.warning(
                "CHAT_AUTH=strict without CHAT_ADMIN_PASSWORD: the first client to log in as admin is admin"
            )
        return settings


def _random_secret(secret: str) -> str:
    log.warning("CHAT_SECRET is not set: using a random secret, so logins end when the server restarts")
    return secret


def _auth_mode(raw: str) -> AuthMode:
    if raw not in AUTH_MODES:
        raise SystemExit(f"CHAT_AUTH must be one of {', '.join(AUTH_MODES)}, got {raw!r}")
    return raw


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if value <= 0:
        raise SystemExit(f"{name} must be above 0, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


settings_key = web.AppKey("settings", Settings)
