"""Settings, read once from the environment (twelve-factor style)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

DEFAULT_DATABASE_URL = "sqlite:///data/chat.sqlite3"


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        defaults = cls()
        origins = tuple(o.strip() for o in env.get("CHAT_CORS_ORIGINS", "").split(",") if o.strip())
        return cls(
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
            secret=env.get("CHAT_SECRET") or defaults.secret,
        )


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


settings_key = web.AppKey("settings", Settings)
