"""The rows behind login sessions and one-time login links (tables `sessions`, `login_links`).

Rows are keyed by an HMAC of the token or link code (chat_server/sessions.py makes it), never by
the token itself: a copy of the database logs no one in. Times are Unix seconds (BIGINT), the
same on both stores whatever the connection's time zone.

A user who has any session row has *claimed* their name (CHAT_AUTH=strict): ended and expired
rows are kept for that, and each user keeps at most MAX_ROWS_PER_USER rows (their newest), so
logins cannot grow the table without bound.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from .loader import Loader

if TYPE_CHECKING:
    from .base import Db

# Sessions a user may hold (phones, browsers, tabs that logged in apart); a login past it ends
# the oldest. Far above what one person uses, low enough to bound the table per user.
MAX_ROWS_PER_USER = 50


class SessionRows:
    def __init__(self, connection: Callable[[], AbstractAsyncContextManager[Db]]) -> None:
        self._connection = connection
        # The streams of a reconnect storm, each with a token this process has not seen yet,
        # share one query (store/loader.py).
        self._live = Loader(self._load_live)

    async def add(self, key: str, user_id: int, now: int, expires_at: int) -> list[str]:
        """Store a new session; the keys of the user's oldest ones it pushed out (now ended)."""
        async with self._connection() as db:
            await db.execute(
                "INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES (%s, %s, %s, %s)",
                (key, user_id, now, expires_at),
            )
            old = await db.fetchall(
                "SELECT id, ended_at, expires_at FROM sessions WHERE user_id = %s "  # idx_sessions_user
                "ORDER BY seq DESC LIMIT 1000 OFFSET %s",
                (user_id, MAX_ROWS_PER_USER),
            )
            if old:
                marks = ", ".join(["%s"] * len(old))
                await db.execute(f"DELETE FROM sessions WHERE id IN ({marks})", [row[0] for row in old])
        return [str(row[0]) for row in old if row[1] is None and int(row[2]) > now]

    async def find(self, key: str, now: int) -> tuple[int, int] | None:
        """(user id, expiry) of a session that has neither ended nor expired."""
        found = (await self._live.load([key])).get(key)
        return found if found is not None and found[1] > now else None

    async def _load_live(self, keys: list[str]) -> dict[str, tuple[int, int]]:
        """(user id, expiry) of each session not ended (expired or not), by primary key."""
        marks = ", ".join(["%s"] * len(keys))
        async with self._connection() as db:
            rows = await db.fetchall(
                f"SELECT id, user_id, expires_at FROM sessions WHERE id IN ({marks}) AND ended_at IS NULL",
                keys,
            )
        return {str(key): (int(user_id), int(expires)) for key, user_id, expires in rows}

    async def renew(self, key: str, expires_at: int) -> None:
        async with self._connection() as db:
            await db.execute(
                "UPDATE sessions SET expires_at = %s WHERE id = %s AND ended_at IS NULL", (expires_at, key)
            )

    async def end(self, key: str, now: int) -> None:
        async with self._connection() as db:
            await db.execute(
                "UPDATE sessions SET ended_at = %s WHERE id = %s AND ended_at IS NULL", (now, key)
            )

    async def end_all(self, user_id: int, now: int) -> list[str]:
        """End every live session of the user; their keys."""
        async with self._connection() as db:
            rows = await db.fetchall(
                "SELECT id FROM sessions WHERE user_id = %s AND ended_at IS NULL AND expires_at > %s",
                (user_id, now),
            )
            await db.execute(
                "UPDATE sessions SET ended_at = %s WHERE user_id = %s AND ended_at IS NULL", (now, user_id)
            )
        return [str(row[0]) for row in rows]

    async def claimed(self, user_id: int) -> bool:
        """Whether anyone ever logged in as the user (their name is then taken in strict mode)."""
        async with self._connection() as db:
            row = await db.fetchone("SELECT 1 FROM sessions WHERE user_id = %s LIMIT 1", (user_id,))
        return row is not None

    async def add_link(self, key: str, user_id: int, expires_at: int) -> None:
        async with self._connection() as db:
            # Links used or expired a day ago say nothing any more: no table grows without bound.
            await db.execute("DELETE FROM login_links WHERE expires_at < %s", (expires_at - 86_400,))
            await db.execute(
                "INSERT INTO login_links (id, user_id, expires_at) VALUES (%s, %s, %s)",
                (key, user_id, expires_at),
            )

    async def use_link(self, key: str, now: int, user_id: int | None = None) -> int | None:
        """The user a valid link is for (if given, only when it is for `user_id`), once: a second
        use, even a concurrent one, finds it used."""
        where, args = "id = %s AND used_at IS NULL AND expires_at > %s", [key, now]
        if user_id is not None:
            where += " AND user_id = %s"
            args.append(user_id)
        async with self._connection() as db:
            taken, _ = await db.execute(f"UPDATE login_links SET used_at = %s WHERE {where}", [now, *args])
            if not taken:
                return None
            row = await db.fetchone("SELECT user_id FROM login_links WHERE id = %s", (key,))
        return None if row is None else int(row[0])
