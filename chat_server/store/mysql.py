"""MySQL/MariaDB through an aiomysql pool."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiomysql
import pymysql

from ..errors import Unavailable
from .base import DEADLOCK_RETRIES, Db, Deadlock, Refused, Row, Store
from .dialect import Dialect, detect
from .schema_files import Added, statements

log = logging.getLogger(__name__)
# The server reports INSERT IGNORE's skipped duplicates and IF NOT EXISTS's existing objects as
# warnings: expected here, and noise in a server's output.
warnings.filterwarnings("ignore", category=pymysql.err.Warning)

# A request waits this long for a pooled connection, and each statement this long for its
# answer, before answering 503: a silent connection (a network stall, a frozen host) otherwise
# waits for TCP keepalive, hours. A statement that times out closes its connection.
ACQUIRE_TIMEOUT = 2.0
QUERY_TIMEOUT = 2.0
# Connecting and creating the database at start-up.
START_TIMEOUT = 10.0
# At shutdown, how long connections still borrowed may take to come back.
CLOSE_TIMEOUT = 5.0
# Below common load-balancer idle timeouts (300 s), which drop connections silently.
POOL_RECYCLE = 280
# MySQL error codes of a transaction rolled back for a deadlock or a lock wait: safe to retry.
ER_LOCK_DEADLOCK = 1213
ER_LOCK_WAIT_TIMEOUT = 1205
SEED_TABLES = ("usuarios", "chats", "chat_participants", "mensajes_v2", "mensajes")
# Statements running on this database, and for how long (PROCESSLIST is read live, unlike the
# InnoDB tables of information_schema, whose cache is not refreshed while it is read often).
_STATEMENTS_RUNNING = (
    "SELECT ID, {elapsed} FROM information_schema.PROCESSLIST "
    "WHERE DB = DATABASE() AND COMMAND NOT IN ('Sleep', 'Daemon') AND ID <> CONNECTION_ID()"
)
SETTLE_POLL = 0.05
# A thread whose statement has run at least this much less than expected runs a newer one.
# Erring long only waits longer.
SETTLE_SLACK_MS = 250.0
ER_BAD_FIELD = 1054


@dataclass(frozen=True)
class MysqlUrl:
    host: str
    port: int
    user: str
    password: str
    database: str
    dialect: str | None = None  # ?dialect=mysql8 forces one (store/dialect.py); else detected

    @classmethod
    def parse(cls, url: str) -> MysqlUrl:
        parts = urlsplit(url)
        database = parts.path.lstrip("/")
        forced = parse_qs(parts.query).get("dialect")
        if not database:
            raise SystemExit(f"DATABASE_URL must name a database: {parts.scheme}://host:port/<db>")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=database,
            dialect=forced[-1] if forced else None,
        )

    def connect_args(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "charset": "utf8mb4",
            "autocommit": True,  # pooled connections must not keep stale read snapshots
            "connect_timeout": 5,
            # Timestamps are stored and read in UTC; Lima time is applied at the edge.
            "init_command": "SET time_zone = '+00:00'",
        }


class _MysqlDb(Db):
    def __init__(self, conn: aiomysql.Connection, *, autocommit: bool, timeout: float | None) -> None:
        self._conn = conn
        self._autocommit = autocommit
        # A single autocommit statement chosen as a deadlock victim was rolled back whole:
        # running it again is safe. Inside a transaction only the caller can retry.
        self._attempts = DEADLOCK_RETRIES if autocommit else 1
        self._timeout = timeout

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        for attempt in range(self._attempts):
            try:
                async with asyncio.timeout(self._timeout), self._conn.cursor() as cur:
                    await cur.execute(sql, tuple(args) or None)
                    return list(await cur.fetchall())
            except pymysql.err.OperationalError as exc:
                _retry_or_raise(exc, attempt, self._attempts)
        raise AssertionError("unreachable")

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> tuple[int, int]:
        for attempt in range(self._attempts):
            try:
                async with asyncio.timeout(self._timeout), self._conn.cursor() as cur:
                    count = await cur.execute(sql, tuple(args) or None)
                    return count, cur.lastrowid
            except pymysql.err.OperationalError as exc:
                _retry_or_raise(exc, attempt, self._attempts)
        raise AssertionError("unreachable")

    async def atomic(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[int, int]]:
        """BEGIN, the statements and COMMIT as one multi-statement query: one round trip
        (aiomysql always asks for CLIENT_MULTI_STATEMENTS; every value is escaped by the driver,
        as in any other statement). The server stops at a failing statement and leaves the
        transaction open: a refused one is rolled back here. A deadlock victim's transaction was
        rolled back whole, so it is run again, as a single statement in autocommit would be."""
        assert self._autocommit, "atomic() is its own transaction, not part of another"
        for attempt in range(self._attempts):
            try:
                async with asyncio.timeout(self._timeout), self._conn.cursor() as cur:
                    body = [cur.mogrify(sql, tuple(args) or None) for sql, args in statements]
                    await cur.execute(";".join(["BEGIN", *body, "COMMIT"]))
                    results = []
                    for _ in statements:
                        await cur.nextset()
                        results.append((cur.rowcount, cur.lastrowid))
                    await cur.nextset()  # COMMIT's answer
                    return results
            except pymysql.err.MySQLError as exc:
                if not _answered_by_server(exc):
                    raise  # the connection is closed (_Borrowed), which rolls back
                async with asyncio.timeout(self._timeout):
                    await self._conn.rollback()
                if not isinstance(exc, pymysql.err.OperationalError):
                    raise
                _retry_or_raise(exc, attempt, self._attempts)
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Db]:
        async with asyncio.timeout(self._timeout):
            await self._conn.begin()
        try:
            yield _MysqlDb(self._conn, autocommit=False, timeout=self._timeout)
        except BaseException as exc:
            # Any other failure closes the connection (_Borrowed), which rolls back.
            if _answered_by_server(exc):
                async with asyncio.timeout(self._timeout):
                    await self._conn.rollback()
            raise
        async with asyncio.timeout(self._timeout):
            await self._conn.commit()


def _retry_or_raise(exc: pymysql.err.OperationalError, attempt: int, attempts: int) -> None:
    if not _is_deadlock(exc) or attempt == attempts - 1:
        raise exc


def _is_deadlock(exc: pymysql.err.OperationalError) -> bool:
    return bool(exc.args) and exc.args[0] in (ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT)


def _answered_by_server(exc: BaseException) -> bool:
    """The server refused the statement and the connection is in step (not lost, not timed out)."""
    if isinstance(exc, pymysql.err.OperationalError):
        return _is_deadlock(exc)
    return isinstance(exc, pymysql.err.IntegrityError | pymysql.err.DataError | pymysql.err.ProgrammingError)


def _raise_as_api_error(exc: BaseException) -> None:
    """Database failures as the API's errors: a deadlock, an unavailable server, a refused value."""
    if isinstance(exc, pymysql.err.OperationalError) and _is_deadlock(exc):
        raise Deadlock("database busy, try again") from exc
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError | OSError):
        log.warning("database unavailable: %r", exc)
        raise Unavailable("database unavailable") from exc
    if isinstance(exc, pymysql.err.IntegrityError | pymysql.err.DataError):
        raise Refused("the database refused this value") from exc


class _Borrowed:
    """A pooled connection for an `async with` block, as a `_MysqlDb`; an unreachable,
    exhausted or silent database becomes a 503.

    A connection whose statement failed for any reason but the server's own answer (a timeout,
    a cancellation, a broken socket) is in an unknown state: it is closed, never returned to
    the pool. (A write on it may still commit: its outcome is unknown.)

    A class rather than an @asynccontextmanager: every stored post borrows one, and a generator
    costs an async generator registered with the loop and a dozen calls more each time."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: aiomysql.Pool, *, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout  # each statement's
        self._conn: aiomysql.Connection | None = None

    async def __aenter__(self) -> _MysqlDb:
        try:
            async with asyncio.timeout(ACQUIRE_TIMEOUT):
                self._conn = conn = await self._pool.acquire()
        except (TimeoutError, OSError, pymysql.err.OperationalError) as exc:
            log.warning("database unavailable: %r", exc)
            raise Unavailable("database unavailable") from exc
        return _MysqlDb(conn, autocommit=True, timeout=self._timeout)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self._conn = self._conn, None
        assert conn is not None, "entered"
        try:
            if exc is not None:
                if not _answered_by_server(exc):
                    conn.close()
                _raise_as_api_error(exc)  # else the block's own exception goes on
        finally:
            self._pool.release(conn)


class MysqlStore(Store):
    def __init__(self, url: str, *, pool_size: int = 20) -> None:
        super().__init__()
        self.url = MysqlUrl.parse(url)
        self.pool_size = pool_size
        self._pool: aiomysql.Pool | None = None
        self.dialect: Dialect | None = None  # known once migrate() has asked the server

    async def migrate(self) -> None:
        # connect_timeout covers the TCP connect only, not the handshake (PITFALLS 2.4): a
        # database that does not answer at start-up fails the start instead of hanging it.
        async with asyncio.timeout(START_TIMEOUT):
            await self._create_database()
            self._pool = await aiomysql.create_pool(
                db=self.url.database,
                minsize=1,
                maxsize=self.pool_size,
                pool_recycle=POOL_RECYCLE,
                **self.url.connect_args(),
            )
        # Schema changes may take long on big tables: no statement time limit here.
        async with _Borrowed(self._pool, timeout=None) as db:
            row = await db.fetchone("SELECT VERSION()")
            self.dialect = detect(str(row[0]) if row else "", self.url.dialect)
            # One process migrates at a time when several start together.
            migrating = self._lock_name("chat_server.migrate")
            await db.fetchone("SELECT GET_LOCK(%s, 60)", (migrating,))
            try:
                await self._run_schema(db, statements("mysql", "schema.sql"))
                await self._convert_collations(db)
                await self._run_schema(db, statements("mysql", "migrations.sql"))
                await self._name_keys(db)
                await self._key_names(db)
                await self._backfill_inboxes(db)
            finally:
                await db.fetchone("SELECT RELEASE_LOCK(%s)", (migrating,))

    async def _create_database(self) -> None:
        conn = await aiomysql.connect(**self.url.connect_args())
        try:
            async with conn.cursor() as cur:
                name = self.url.database.replace("`", "``")
                await cur.execute(
                    f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
        finally:
            conn.close()

    async def _name_keys(self, db: Db) -> None:
        """usuarios.name_key (chat_server/names.py), one user per key, and name_skeleton (to find
        names that look alike), compared as bytes: the key
        is canonical already, and a collation would fold it again its own way. The seed's
        UNIQUE(username) compares by utf8mb4_unicode_ci, which takes names the key tells apart for
        one (every character outside the BMP is the same to it; `æ` is `ae`): it would refuse a
        user the key allows, so that column compares bytes too, and refuses only what the key
        refuses already. One ALTER TABLE for all of it: a single rebuild of the table."""
        rows = await db.fetchall(
            "SELECT COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'usuarios' "
            "AND COLUMN_NAME IN ('username', 'name_key', 'name_skeleton')"
        )
        columns = {str(name): collation for name, collation in rows}
        changes = []
        if columns.get("username") != "utf8mb4_bin":
            changes.append("MODIFY username VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL")
        if "name_key" not in columns:
            changes.append("ADD COLUMN name_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL")
            changes.append("ADD UNIQUE INDEX uniq_name_key (name_key)")
        if "name_skeleton" not in columns:
            changes.append(
                "ADD COLUMN name_skeleton VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL"
            )
            changes.append("ADD INDEX idx_name_skeleton (name_skeleton)")
        if changes:
            await db.execute("ALTER TABLE usuarios " + ", ".join(changes))

    async def _convert_collations(self, db: Db) -> None:
        """Tables made by hand from the seed take the server's default charset: make them utf8mb4."""
        rows = await db.fetchall(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_TYPE = 'BASE TABLE' AND TABLE_COLLATION <> 'utf8mb4_unicode_ci' "
            f"AND TABLE_NAME IN ({', '.join(['%s'] * len(SEED_TABLES))})",
            SEED_TABLES,
        )
        for (table,) in rows:
            log.warning("converting table %s to utf8mb4_unicode_ci", table)
            await db.execute(
                f"ALTER TABLE `{table}` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )

    def connection(self) -> AbstractAsyncContextManager[Db]:
        assert self._pool is not None, "start() first"
        return _Borrowed(self._pool, timeout=QUERY_TIMEOUT)

    def _lock_name(self, purpose: str) -> str:
        """Named locks belong to the whole server, not to a database: the name carries ours, so
        servers on other databases of the same MariaDB/MySQL never wait for each other. At most
        64 characters, as both servers require."""
        digest = hashlib.sha256(self.url.database.encode()).hexdigest()[:16]
        return f"{purpose[:47]}/{digest}"

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        # A named lock belongs to the connection: it is held on this one, borrowed for the block,
        # and freed by the server if the process dies.
        name = self._lock_name(name)
        async with self.connection() as db:
            row = await db.fetchone("SELECT GET_LOCK(%s, 0)", (name,))
            held = bool(row and row[0] == 1)
            try:
                yield held
            finally:
                if held:
                    await db.fetchone("SELECT RELEASE_LOCK(%s)", (name,))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Db]:
        async with self.connection() as db, db.transaction() as tx:
            yield tx

    async def writes_settled(self, after_id: int, below_id: int) -> None:
        """Wait until no write that had begun can still commit an id in (after_id, below_id).

        An id is handed out inside an INSERT statement, before its row is in the index. So:
        first every statement running now ends (PROCESSLIST, live); then a locking read of the
        range waits for the rows that are in the index but not committed (an open transaction,
        its statement over). Nothing else can add an id there: later statements get larger ids."""
        loop = asyncio.get_running_loop()
        waiting: dict[int, float] | None = None  # thread -> how long its statement had run
        taken = 0.0
        while waiting is None or waiting:
            running, now = await self._statements_running(), loop.time()
            if waiting is None:
                waiting, taken = running, now
            else:
                elapsed = (now - taken) * 1000
                waiting = {
                    thread: ms
                    for thread, ms in waiting.items()
                    if running.get(thread, -1.0) >= ms + elapsed - SETTLE_SLACK_MS
                }
            if waiting:
                await asyncio.sleep(SETTLE_POLL)  # the server has no event for "a statement ended"
        async with self.connection() as db:
            await db.fetchall(
                "SELECT id FROM mensajes_v2 WHERE id > %s AND id < %s LOCK IN SHARE MODE",  # PRIMARY
                (after_id, below_id),
            )

    async def _statements_running(self) -> dict[int, float]:
        async with self.connection() as db:
            try:
                rows = await db.fetchall(_STATEMENTS_RUNNING.format(elapsed="TIME_MS"))
            except pymysql.err.OperationalError as exc:
                if exc.args[0] != ER_BAD_FIELD:
                    raise
                rows = await db.fetchall(_STATEMENTS_RUNNING.format(elapsed="TIME * 1000"))  # MySQL
        return {int(thread): float(ms) for thread, ms in rows}

    async def _supports_returning(self) -> bool:
        assert self.dialect is not None, "migrate() first"
        return self.dialect.returning

    async def _schema_has(self, db: Db, added: Added) -> bool:
        # information_schema answers the same on MariaDB and MySQL 8.
        if added.kind == "index":
            sql = "SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
            sql += "AND TABLE_NAME = %s AND INDEX_NAME = %s LIMIT 1"
        else:
            sql = "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
            sql += "AND TABLE_NAME = %s AND COLUMN_NAME = %s LIMIT 1"
        return await db.fetchone(sql, (added.table, added.name)) is not None

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            try:
                # wait_closed waits for every borrowed connection to come back: not forever.
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._pool.wait_closed()
            except TimeoutError:
                log.warning("database connections still in use at shutdown: closing them")
                self._pool.terminate()
