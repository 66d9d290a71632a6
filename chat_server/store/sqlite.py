"""The embedded store: SQLite through aiosqlite, for `make run` without a database server."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from ..models import InboxPosition
from .base import Db, Row, Store
from .schema_files import Added, statements


def _sqlite_sql(sql: str) -> str:
    """The shared SQL is written for MySQL; these are the only dialect differences it uses
    (SQLite has no row locks: a transaction holds the whole database)."""
    return sql.replace("%s", "?").replace("INSERT IGNORE", "INSERT OR IGNORE").replace(" FOR UPDATE", "")


class _SqliteDb(Db):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        async with self._conn.execute(_sqlite_sql(sql), tuple(args)) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> tuple[int, int]:
        async with self._conn.execute(_sqlite_sql(sql), tuple(args)) as cur:
            return cur.rowcount, cur.lastrowid or 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Db]:
        await self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            await self._conn.execute("ROLLBACK")
            raise
        await self._conn.execute("COMMIT")


class SqliteStore(Store):
    inbox_by_activity = "chat_inbox"  # SQLite reads the row value below as a range by itself
    last_insert_id = "last_insert_rowid()"
    inbox_upsert = (
        " ON CONFLICT (chat_id, user_id) DO UPDATE SET"
        " last_message_id = MAX(last_message_id, excluded.last_message_id),"
        " unread = unread + excluded.unread"
    )
    # FTS5 first: it yields matches newest first, each then found by primary key.
    fulltext_from = (
        "FROM mensajes_fts JOIN mensajes_v2 m ON m.id = mensajes_fts.rowid "
        "LEFT JOIN usuarios u ON u.id = m.sender_id"
    )
    fulltext_match = "mensajes_fts MATCH %s"
    fulltext_order = "mensajes_fts.rowid"  # FTS5 yields rowids in order: no sort of the matches
    names_first_select = "SELECT "
    names_first_join = "CROSS JOIN "

    @staticmethod
    def fulltext_query(words: Sequence[str]) -> str:
        return " ".join('"' + word.replace('"', '""') + '"' for word in words)

    @staticmethod
    def inbox_after(after: InboxPosition) -> tuple[str, list[Any]]:
        # A row value: SQLite reads it as one range of idx_inbox_activity.
        return "(last_message_id, chat_id) < (%s, %s)", [after.activity, after.chat_id]

    def __init__(self, url: str) -> None:
        super().__init__()
        # sqlite:///data/x.db is relative to the working directory, sqlite:////abs/x.db absolute.
        self.path = url.removeprefix("sqlite:///")
        self._conn: aiosqlite.Connection | None = None
        # One connection, one statement or transaction at a time: SQLite has a single writer
        # anyway, and a shared connection must not mix one caller's statements into another's
        # transaction.
        self._lock = asyncio.Lock()

    async def migrate(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        await self._conn.execute("PRAGMA journal_mode=WAL")
        await self._conn.execute("PRAGMA busy_timeout=5000")
        async with self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'mensajes_fts'") as cur:
            had_search = await cur.fetchone() is not None
        # In one transaction: two processes starting on one file do not both add a column.
        async with self.transaction() as db:
            await self._run_schema(db, statements("sqlite", "schema.sql"))
            await self._key_names(db)
            await self._backfill_inboxes(db)
            if not had_search:
                # The triggers index new messages; the ones already there are indexed once, now.
                await db.execute("INSERT INTO mensajes_fts (mensajes_fts) VALUES ('rebuild')")

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Db]:
        assert self._conn is not None, "start() first"
        async with self._lock:
            yield _SqliteDb(self._conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Db]:
        async with self.connection() as db, db.transaction() as tx:
            yield tx

    async def writes_settled(self, after_id: int, below_id: int) -> None:
        # One process, one connection, one statement at a time: once the lock is ours, every
        # write that had begun has ended.
        async with self._lock:
            pass

    async def _supports_returning(self) -> bool:
        return sqlite3.sqlite_version_info >= (3, 35)

    async def _schema_has(self, db: Db, added: Added) -> bool:
        if added.kind == "index":
            row = await db.fetchone(
                "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = %s", (added.name,)
            )
        else:
            row = await db.fetchone(
                "SELECT 1 FROM pragma_table_info(%s) WHERE name = %s", (added.table, added.name)
            )
        return row is not None

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
