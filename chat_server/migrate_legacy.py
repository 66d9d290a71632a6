"""Copy the seed's legacy `mensajes` table into the v2 tables: in the background at every start
(`LegacyBackfill`), or by hand with `python -m chat_server migrate-legacy`.

Besides chat_server/legacy.py, this is the only code that knows the legacy table and its names.

- Each legacy row becomes one message of `mensajes_v2`: rows with a `destinatario` go to the DM of
  that pair, the rest to General. Its timestamp is kept. Its id is below 0, so below the id of
  every new message, past or future: copied rows are history, never "new" to a stream, a resume
  (Last-Event-ID), a poll or an unread count, while history, ordered by time, shows them among
  the new messages (docs/design.md, "Legacy history"). Each run takes a block of ids below the
  lowest id in the table, and within a run the ids follow the legacy rows' time order
  (timestamp, then id).
- Users are created as needed, each with a DM with admin as at a first login. The name `admin`,
  or `tipo_usuario` 'admin' in any of a name's rows, gives a new user the admin role (the role
  of a user who already exists is left alone).
- `legacy_migrated` (made here, not in the core schema) records which legacy row became which
  message. Rows are copied in chunks, each in one transaction with its records, so a run that
  stops half-way never copies a row twice and a later run copies only what is left.
- Rows that cannot be copied (no usable name or timestamp, a DM with oneself) are skipped, left
  unrecorded and counted in the summary; a later run tries them again.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pymysql
from aiohttp import web

from .errors import ApiError
from .keeper import keeper_key
from .models import ADMIN_USERNAME, User, utc_now
from .names import name_key, name_skeleton
from .settings import Settings
from .store import Store, open_store, store_key
from .store.base import Db, Row, _sql_time
from .store.sqlite import SqliteStore
from .validation import clean_username

log = logging.getLogger(__name__)

# Legacy rows read, and then written in one transaction, at a time.
CHUNK_ROWS = 5000
# One INSERT carries at most this many rows and about this much text: well below the smallest
# max_allowed_packet (4 MiB on MySQL 5.7) and SQLite's 32766 parameters.
INSERT_ROWS = 1000
INSERT_BYTES = 1 << 20

_LEDGER_DDL = {
    "mysql": (
        "CREATE TABLE IF NOT EXISTS legacy_migrated ("
        " legacy_id INT NOT NULL PRIMARY KEY,"
        " message_id INT NOT NULL,"
        " UNIQUE KEY uniq_message (message_id)"
        ") DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"
    ),
    "sqlite": (
        "CREATE TABLE IF NOT EXISTS legacy_migrated ("
        " legacy_id INTEGER NOT NULL PRIMARY KEY,"
        " message_id INTEGER NOT NULL UNIQUE)"
    ),
}
_PENDING = "FROM mensajes m LEFT JOIN legacy_migrated l ON l.legacy_id = m.id WHERE l.legacy_id IS NULL"
_READ = (
    "SELECT m.id, m.usuario, m.mensaje, m.timestamp, m.tipo_usuario, m.destinatario "
    + _PENDING
    + " AND m.timestamp IS NOT NULL"
)


@dataclass
class Report:
    """What one run did; `lines()` is the summary the command prints."""

    total: int = 0  # rows in the legacy table
    copied_before: int = 0  # by earlier runs
    read: int = 0
    copied: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # by reason
    per_chat: Counter[str] = field(default_factory=Counter)  # copied rows by chat label
    users_created: int = 0
    dms_created: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [
            f"legacy rows: {self.total} ({self.copied_before} copied by earlier runs)",
            f"read {self.read}, copied {self.copied}, skipped {sum(self.skipped.values())}"
            f" in {self.seconds:.1f} s",
        ]
        out += [f"  skipped, {reason}: {count}" for reason, count in sorted(self.skipped.items())]
        out.append(f"users created: {self.users_created}, direct-message chats created: {self.dms_created}")
        if self.per_chat:
            out.append("copied per chat:")
            out += [f"  {label}: {count}" for label, count in self.per_chat.most_common()]
        return out


@dataclass(frozen=True, slots=True)
class _Copy:
    """One legacy row, resolved to its v2 message."""

    legacy_id: int
    chat_id: int
    sender_id: int
    contenido: str
    timestamp: str  # as the store writes it (see store.base._sql_time)


class _Skip(Exception):
    """A legacy row that cannot become a v2 message; the text is the reason."""


class LegacyMigration:
    def __init__(
        self,
        store: Store,
        *,
        chunk_rows: int = CHUNK_ROWS,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.chunk_rows = chunk_rows
        self.progress = progress
        self.report = Report()
        self._users: dict[str, User] = {}  # by legacy name as written
        self._dms: dict[tuple[int, int], int] = {}  # (low user id, high user id) -> chat id
        self._labels: dict[int, str] = {}  # chat id -> label in the summary
        self._admin_keys: set[str] = set()  # names with tipo_usuario 'admin' in some row
        self._admin: User | None = None
        self._next_id = 0  # the id of the next copied message; < 0
        self._last_id = -1  # the last id of this run's block
        self.left = 0  # rows with a timestamp this run has still to read (for /metrics)

    async def run(self) -> Report:
        started = time.monotonic()
        dialect = "sqlite" if isinstance(self.store, SqliteStore) else "mysql"
        async with self.store.connection() as db:
            await db.execute(_LEDGER_DDL[dialect])
            self.report.total = await _count(db, "SELECT COUNT(*) FROM mensajes")
            pending = await _count(db, "SELECT COUNT(*) " + _PENDING)
            no_time = await _count(db, "SELECT COUNT(*) " + _PENDING + " AND m.timestamp IS NULL")
            admins = await db.fetchall(
                "SELECT DISTINCT usuario FROM mensajes WHERE LOWER(TRIM(tipo_usuario)) = 'admin'"
            )
        self.report.copied_before = self.report.total - pending
        self.left = pending - no_time
        await self._reserve_ids(self.left)
        self.report.read = no_time
        if no_time:
            self.report.skipped["no timestamp"] = no_time
        self._admin_keys = {name_key(name) for (name,) in admins if isinstance(name, str)}
        self._admin = await self.store.get_user(username=ADMIN_USERNAME)
        assert self._admin is not None, "store.start() creates admin"
        self._labels[self.store.general_id] = "General"

        after: tuple[Any, int] | None = None
        while self.left:
            # Rows added while this runs are for the next run: its ids are for the rows counted.
            rows = await self._read(after, min(self.chunk_rows, self.left))
            if not rows:
                break
            after = (rows[-1][3], rows[-1][0])
            copies = [c for c in [await self._resolve(row) for row in rows] if c is not None]
            await self._write(copies)
            self.report.read += len(rows)
            self.report.copied += len(copies)
            self.left -= len(rows)
            if pending > self.chunk_rows and self.progress is not None:
                rate = self.report.read / max(time.monotonic() - started, 1e-6)
                self.progress(
                    f"{self.report.read}/{pending} rows read ({100 * self.report.read // pending}%),"
                    f" {self.report.copied} copied, {rate:.0f} rows/s"
                )
        self.report.seconds = time.monotonic() - started
        return self.report

    async def _reserve_ids(self, count: int) -> None:
        """Ids for `count` messages, ending just below both 0 and the lowest id in the table.
        Another run at the same time would take the same block: its first insert then fails on
        the primary key and rolls its chunk back (one process copies at a time: LegacyBackfill)."""
        async with self.store.connection() as db:
            lowest = await _count(db, "SELECT MIN(id) FROM mensajes_v2")  # the primary key's first entry
        self._last_id = min(lowest, 0) - 1
        self._next_id = self._last_id - count + 1

    async def _read(self, after: tuple[Any, int] | None, limit: int) -> list[Row]:
        """The next `limit` rows not copied yet, in (timestamp, id) order."""
        sql, args = _READ, []
        if after is not None:
            # The timestamp goes back exactly as read, so the comparison is the column's own.
            sql += " AND (m.timestamp > %s OR (m.timestamp = %s AND m.id > %s))"
            args = [after[0], after[0], after[1]]
        async with self.store.connection() as db:
            return await db.fetchall(sql + " ORDER BY m.timestamp, m.id LIMIT %s", [*args, limit])

    async def _resolve(self, row: Row) -> _Copy | None:
        legacy_id, usuario, mensaje, timestamp, _, destinatario = row
        try:
            moment = _timestamp(timestamp)
            sender = await self._user(usuario, "usuario")
            if destinatario is None or (isinstance(destinatario, str) and not destinatario.strip()):
                chat_id = self.store.general_id
            else:
                chat_id = await self._dm(sender, await self._user(destinatario, "destinatario"))
        except _Skip as skip:
            self.report.skipped[str(skip)] += 1
            return None
        self.report.per_chat[self._labels[chat_id]] += 1
        return _Copy(int(legacy_id), chat_id, sender.id, str(mensaje), _sql_time(moment))

    async def _user(self, raw: Any, column: str) -> User:
        """The v2 user of a legacy name, created on first sight."""
        user = self._users.get(raw)
        if user is not None:
            return user
        try:
            name = clean_username(raw, column)
        except ApiError:
            raise _Skip(f"invalid {column}") from None
        user = await self.store.get_user(username=name)
        if user is None:
            if name_key(name) in self._admin_keys:
                user, created = await self._create_admin(name)
            else:
                user, created = await self.store.ensure_user(name)
            if created:
                self.report.users_created += 1
                # As at a first login (service.ensure_user), with no hub to announce it to.
                assert self._admin is not None
                if user.id != self._admin.id:
                    await self._dm(self._admin, user)
        self._users[raw] = user
        return user

    async def _create_admin(self, name: str) -> tuple[User, bool]:
        """store.ensure_user, but with the admin role from the start: the store caches users as
        never changing, so a role set afterwards would not be seen by the store that made them."""
        async with self.store.connection() as db:
            count, _ = await db.execute(
                "INSERT IGNORE INTO usuarios (username, name_key, name_skeleton, role, creado_en) "
                "VALUES (%s, %s, %s, 'admin', %s)",
                (name, name_key(name), name_skeleton(name), _sql_time(utc_now())),
            )
        user = await self.store.get_user(username=name)
        assert user is not None
        if count:
            async with self.store.connection() as db:
                await db.execute(
                    "INSERT IGNORE INTO chat_participants (chat_id, user_id) VALUES (%s, %s)",
                    (self.store.general_id, user.id),
                )
        return user, bool(count)

    async def _dm(self, a: User, b: User) -> int:
        if a.id == b.id:
            raise _Skip("destinatario is the sender")
        low, high = sorted((a.id, b.id))
        chat_id = self._dms.get((low, high))
        if chat_id is None:
            chat, created = await self.store.get_or_create_dm(a, b)
            chat_id = self._dms[low, high] = chat.id
            self.report.dms_created += created
            names = sorted((a.username, b.username), key=lambda n: (n != ADMIN_USERNAME, n.lower()))
            self._labels[chat_id] = f"DM {names[0]} / {names[1]} (chat {chat_id})"
        return chat_id

    async def _write(self, copies: Sequence[_Copy]) -> None:
        """The chunk's messages and their records, all or nothing."""
        if not copies:
            return
        async with self.store.transaction() as db:
            for batch in _batches(copies):
                ids = list(range(self._next_id, self._next_id + len(batch)))
                self._next_id += len(batch)
                # Explicit ids: the same statement on every server (no RETURNING needed).
                await db.execute(
                    "INSERT INTO mensajes_v2 (id, chat_id, sender_id, contenido, timestamp) VALUES "
                    + ", ".join(["(%s, %s, %s, %s, %s)"] * len(batch)),
                    [
                        v
                        for c, message_id in zip(batch, ids, strict=True)
                        for v in (message_id, c.chat_id, c.sender_id, c.contenido, c.timestamp)
                    ],
                )
                await db.execute(
                    "INSERT INTO legacy_migrated (legacy_id, message_id) VALUES "
                    + ", ".join(["(%s, %s)"] * len(batch)),
                    [v for c, message_id in zip(batch, ids, strict=True) for v in (c.legacy_id, message_id)],
                )
                await self._show_in_inboxes(db, batch, ids)

    async def _show_in_inboxes(self, db: Db, batch: Sequence[_Copy], ids: Sequence[int]) -> None:
        """A DM without new messages lists its newest copied one in its participants' inboxes
        (never as unread). Ids of a run follow the legacy time order, and a later run copies newer
        rows: the last copied id of a DM in this batch is its newest."""
        newest = {c.chat_id: message_id for c, message_id in zip(batch, ids, strict=True)}
        newest.pop(self.store.general_id, None)  # General has no inbox rows
        for chat_id, message_id in newest.items():
            await db.execute(
                "UPDATE chat_inbox SET last_message_id = %s WHERE chat_id = %s AND last_message_id <= 0",
                (message_id, chat_id),
            )


async def migrate_legacy(
    store: Store,
    *,
    chunk_rows: int = CHUNK_ROWS,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Copy what is left of the legacy table; the store must be started."""
    migration = LegacyMigration(store, chunk_rows=chunk_rows, progress=progress)
    return await migration.run()


def _batches(copies: Sequence[_Copy]) -> list[Sequence[_Copy]]:
    batches, start, size = [], 0, 0
    for i, c in enumerate(copies):
        size += len(c.contenido.encode()) + 64
        if i > start and (i - start >= INSERT_ROWS or size > INSERT_BYTES):
            batches.append(copies[start:i])
            start, size = i, len(c.contenido.encode()) + 64
    batches.append(copies[start:])
    return batches


def _timestamp(value: Any) -> datetime:
    """A legacy TIMESTAMP as aware UTC: MySQL sessions run in UTC (naive datetimes come back);
    SQLite keeps CURRENT_TIMESTAMP's UTC text. Zero dates and garbage are skipped."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _Skip("invalid timestamp") from None
    if not isinstance(value, datetime):
        raise _Skip("invalid timestamp")
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


async def _count(db: Db, sql: str) -> int:
    row = await db.fetchone(sql)
    return int(row[0]) if row and row[0] is not None else 0


# -- in the background, at every start ---------------------------------------------------


class LegacyBackfill:
    """Copies what is left of the legacy table while the server serves: a start on a database
    of the legacy app needs no manual step. One process copies at a time (a named lock on the
    database); the others leave it to that one.

    `done` is set once this process has nothing more to copy (copied, or another process holds
    the lock); until then `migration` shows the progress, also in /metrics."""

    LOCK = "chat_server.migrate_legacy"

    def __init__(self, store: Store) -> None:
        self.store = store
        self.migration: LegacyMigration | None = None
        self.done = asyncio.Event()

    async def run(self) -> None:
        async with self.store.exclusive(self.LOCK) as held:
            if held:
                self.migration = LegacyMigration(self.store, progress=log.info)
                report = await self.migration.run()
                if report.read:
                    for line in report.lines():
                        log.info("legacy history: %s", line)
            else:
                log.info("legacy history: another process is copying it")
        self.done.set()


backfill_key = web.AppKey("legacy_backfill", LegacyBackfill)
BACKFILL_TASK = "legacy backfill"


async def backfill_ctx(app: web.Application) -> AsyncIterator[None]:
    """Starts the copy once the store is up, under the keeper: a failed run is logged and run
    again after a pause (it resumes where the chunks stopped). Stopped at shutdown: a chunk in
    flight rolls back."""
    backfill = app[backfill_key] = LegacyBackfill(app[store_key])
    keeper = app[keeper_key]
    keeper.spawn(BACKFILL_TASK, backfill.run)
    yield
    await keeper.stop(BACKFILL_TASK)


# -- the command ---------------------------------------------------------------------


def add_command(subcommands: Any) -> None:
    """Register `migrate-legacy` on an argparse subparsers object."""
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "migrate-legacy",
        help="copy the legacy mensajes table into the v2 chats (idempotent)",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="the database to migrate (default: DATABASE_URL, else the embedded SQLite file)",
    )
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help="legacy rows per transaction")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    url = args.database_url or Settings.from_env().database_url
    if args.chunk_rows < 1:
        print("--chunk-rows must be at least 1", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_run(url, args.chunk_rows))
    except (OSError, ApiError, pymysql.err.OperationalError) as exc:
        print(f"migrate-legacy: the database is unavailable: {exc}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line, flush=True)
    return 0


async def _run(url: str, chunk_rows: int) -> Report:
    store = open_store(url)
    try:
        await store.start()
        return await migrate_legacy(store, chunk_rows=chunk_rows, progress=_print)
    finally:
        await store.close()


def _print(line: str) -> None:
    print(line, flush=True)
