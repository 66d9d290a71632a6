"""The embedded store: SQLite through aiosqlite, for `make run` without a database server."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from .base import Db, Row, Store
from .schema_files import Added, statements


def _sqlite_sql(sql: str) -> str:
    """The shared SQL is written for MySQL; these are the only dialect differences it uses."""
    return sql.replace("%s", "?").replace("INSERT IGNORE", "INSERT OR IGNORE")


class _SqliteDb(Db):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        async with self._conn.execute(_sqlite_sql(sql), tuple(args)) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> tuple[int, int]:
        async with self._conn.execute(_sqlite_sql(sql), tuple(args)) as cur:
            return cur.rowcount, cur.lastrowid or 0


class SqliteStore(Store):
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
        # In one transaction: two processes starting on one file do not both add a column.
        async with self.transaction() as db:
            await self._run_schema(db, statements("sqlite", "schema.sql"))
            await self._key_names(db)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Db]:
        assert self._conn is not None, "start() first"
        async with self._lock:
            yield _SqliteDb(self._conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Db]:
        assert self._conn is not None, "start() first"
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteDb(self._conn)
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

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
