"""The storage interface and the SQL both stores share.

Handlers only see `Store` methods. Every query lives here, written once in MySQL's
`%s` parameter style; the SQLite store rewrites the few dialect differences.
"""

from __future__ import annotations

import abc
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from aiohttp import web

from ..errors import BadRequest, Unavailable
from ..models import ADMIN_USERNAME, Chat, InboxPosition, Message, ReadMarker, Role, User, utc_now
from ..names import ADMIN_KEY, MAX_KEY_CHARS, name_key, name_skeleton
from .batching import InsertBatcher
from .dialect import RETURNING_ID
from .loader import Loader
from .schema_files import Added, added_object
from .sessions import SessionRows

log = logging.getLogger(__name__)
Row = tuple[Any, ...]
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

# Page sizes of GET /api/messages: what a chat window shows, and a cap on one answer.
DEFAULT_PAGE = 50
MAX_PAGE = 200
# Chats per page of GET /api/chats: a screenful and more; `limit` may ask up to MAX_PAGE.
DEFAULT_CHATS_PAGE = 50
# A user with this many DMs is searched by name from the username index, not from their DMs.
MANY_DMS = 1000

_USER_COLUMNS = "u.id, u.username, u.role, u.estado, u.creado_en"
_MESSAGE_COLUMNS = "SELECT m.id, m.chat_id, m.sender_id, u.username, m.contenido, m.timestamp "
_MESSAGE_SELECT = _MESSAGE_COLUMNS + "FROM mensajes_v2 m LEFT JOIN usuarios u ON u.id = m.sender_id "
INSERT_MESSAGE = "INSERT INTO mensajes_v2 (chat_id, sender_id, contenido, timestamp) VALUES "
ONE_ROW = "(%s, %s, %s, %s)"
INSERT_ONE_MESSAGE = INSERT_MESSAGE + ONE_ROW


# Users keyed per statement when usuarios.name_key is filled (SQLite allows 32766 parameters).
KEY_BATCH = 500

# A transaction chosen as a deadlock victim is run again this many times in all.
DEADLOCK_RETRIES = 3


class Deadlock(Unavailable):
    """The database rolled a transaction back to break a deadlock: running it again is safe."""


async def retry_deadlocks(work: Callable[[], Awaitable[T]]) -> T:
    """Run a transaction again when the database chose it as a deadlock victim: it was rolled
    back whole, so nothing of it is stored."""
    for attempt in range(DEADLOCK_RETRIES):
        try:
            return await work()
        except Deadlock:
            if attempt == DEADLOCK_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


class Refused(BadRequest):
    """The database refused a statement for its values (a constraint, a value too long for its
    column): nothing of it was stored, and only the request that sent those values fails."""


class Db(abc.ABC):
    """One connection, borrowed for one operation or one transaction."""

    @abc.abstractmethod
    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...

    @abc.abstractmethod
    async def execute(self, sql: str, args: Sequence[Any] = ()) -> tuple[int, int]:
        """Run a statement; return (rowcount, lastrowid)."""

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, args)
        return rows[0] if rows else None

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Db]:
        """This connection inside a transaction for the block: committed at its end, rolled
        back if the block fails."""

    async def atomic(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[int, int]]:
        """Run `statements` in order as one transaction, outside any other; return each one's
        (rowcount, lastrowid). Here one at a time inside `transaction()`: a driver that can
        sends them in a single round trip."""
        async with self.transaction() as tx:
            return [await tx.execute(sql, args) for sql, args in statements]


class Store(abc.ABC):
    """Users, chats and messages over SQL. Subclasses provide connections and dialect."""

    # How a username is compared: MySQL's utf8mb4_unicode_ci ignores case and accents.
    # Names are found by their key (chat_server/names.py), unique: one DM per pair, one row a name.
    username_order = "u.name_key"
    # Join in the order written (MariaDB's STRAIGHT_JOIN; SQLite's CROSS JOIN).
    names_first_select = "SELECT STRAIGHT_JOIN "
    names_first_join = "JOIN "
    # The inbox read through its activity index as a range from a position. MariaDB otherwise
    # picks, for a position near the top of a long inbox, a scan of the user's whole index entry
    # from the top (`ref` with ORDER BY ... LIMIT), skipping every row above the position:
    # measured 30-90 ms at 100,000 chats instead of 0.5 ms. FORCE INDEX is MySQL 8's too.
    inbox_by_activity = "chat_inbox FORCE INDEX (idx_inbox_activity)"
    # A batch's inbox changes: the newest id is kept, unread counts are added.
    # The id the connection's last INSERT made (an inbox row of the same transaction takes it).
    last_insert_id = "LAST_INSERT_ID()"
    inbox_upsert = (
        " ON DUPLICATE KEY UPDATE last_message_id = GREATEST(last_message_id, VALUES(last_message_id)),"
        " unread = unread + VALUES(unread)"
    )

    def __init__(self) -> None:
        self.general_id = 0
        # Users and chats never change once made (a DM's pair is fixed; General is everyone),
        # so they are cached and the hot path (post a message) is one round trip: the INSERT.
        self._users_by_id: BoundedCache[int, User] = BoundedCache()
        self._users_by_name: BoundedCache[str, User] = BoundedCache()
        self._chats: BoundedCache[int, Chat] = BoundedCache()
        # Misses asked at once (a burst of stream connects, each for its own chat and user) and
        # the DM partners of users coming online share one query (store/loader.py).
        self._chat_loader = Loader(self._load_chats)
        self._user_loader = Loader(functools.partial(self._load_users, "id"))
        self._user_by_name_loader = Loader(functools.partial(self._load_users, "name_key"))
        self._partner_loader = Loader(self._load_dm_partners)
        self.sessions = SessionRows(self.connection)
        self.returning = False
        # A batch refused for its values, or rolled back whole as a deadlock victim, stored
        # nothing: its rows are tried again one by one.
        self._batcher = InsertBatcher(self._batch_connection, self.insert_messages, (Refused, Deadlock))
        self.messages_stored = 0  # by this process, for /metrics

    # -- provided by each backend ---------------------------------------------------

    @abc.abstractmethod
    def connection(self) -> AbstractAsyncContextManager[Db]:
        """An async context manager lending one connection in autocommit mode."""

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Db]:
        """An async context manager lending one connection inside a transaction."""

    @abc.abstractmethod
    async def migrate(self) -> None:
        """Create or upgrade the schema, idempotently."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def writes_settled(self, after_id: int, below_id: int) -> None:
        """Return once no write that had begun when called can still commit an id in
        (after_id, below_id). The ordering proof (see `DatabaseFollower`): an id missing below
        a committed one was handed out earlier, so then the table shows it or never will."""

    @abc.abstractmethod
    async def _supports_returning(self) -> bool:
        """Whether INSERT ... RETURNING gives back the ids of a multi-row insert."""

    @abc.abstractmethod
    async def _schema_has(self, db: Db, added: Added) -> bool:
        """Whether the database has this index or column already."""

    async def _run_schema(self, db: Db, statements: Sequence[str]) -> None:
        """Run schema statements; one that adds an index or a column only if it is missing."""
        for sql in statements:
            added = added_object(sql)
            if added is None or not await self._schema_has(db, added):
                await db.execute(sql)

    # -- start-up ----------------------------------------------------------------

    async def start(self) -> None:
        await self.migrate()
        self.returning = await self._supports_returning()
        async with self.connection() as db:
            row = await db.fetchone("SELECT MIN(id) FROM chats WHERE type = 'general'")
        assert row is not None, "the schema seeds the General chat"
        self.general_id = int(row[0])
        await self.ensure_user(ADMIN_USERNAME)
        await self._backfill_memberships()

    async def _backfill_memberships(self) -> None:
        """Give users made outside this server (e.g. by the seed's SQL) General and a DM with admin."""
        admin = await self.get_user(username=ADMIN_USERNAME)
        assert admin
        # Both read only what is missing, one index lookup a user (uniq_chat_user, dm_pairs'
        # primary key): a start with 100,000 customers stays within the statement time limit.
        async with self.connection() as db:
            await db.execute(
                "INSERT IGNORE INTO chat_participants (chat_id, user_id) SELECT %s, u.id FROM usuarios u "
                "WHERE NOT EXISTS (SELECT 1 FROM chat_participants p "
                "WHERE p.chat_id = %s AND p.user_id = u.id)",
                (self.general_id, self.general_id),
            )
            rows = await db.fetchall(
                "SELECT " + _USER_COLUMNS + " FROM usuarios u WHERE u.id <> %s AND NOT EXISTS "
                "(SELECT 1 FROM dm_pairs d WHERE d.user_low = CASE WHEN u.id < %s THEN u.id ELSE %s END "
                "AND d.user_high = CASE WHEN u.id < %s THEN %s ELSE u.id END)",  # portable LEAST/GREATEST
                (admin.id, admin.id, admin.id, admin.id, admin.id),
            )
        for row in rows:
            await self.get_or_create_dm(admin, self._user(row))

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """Whether this process holds the lock `name`, among every process on this database, for
        the block (never waiting for it). The embedded store serves one process: it always does."""
        yield True

    async def _backfill_inboxes(self, db: Db) -> None:
        """DMs made before chat_inbox existed (or by a server that did not keep it): their newest
        message and the unread after each participant's marker. Only missing rows are computed,
        so a later start costs an anti-join of the participants, not a recount. Run by `migrate`
        (no statement time limit: the first time, on a big database, it takes a while)."""
        await db.execute(
            "INSERT IGNORE INTO chat_inbox (chat_id, user_id, last_message_id, unread) "
            "SELECT p.chat_id, p.user_id, "
            "COALESCE((SELECT MAX(m.id) FROM mensajes_v2 m WHERE m.chat_id = p.chat_id), 0), "
            "(SELECT COUNT(*) FROM mensajes_v2 m WHERE m.chat_id = p.chat_id "
            "AND m.sender_id <> p.user_id AND m.id > COALESCE((SELECT r.last_read_id FROM chat_reads r "
            "WHERE r.chat_id = p.chat_id AND r.user_id = p.user_id), 0)) "
            "FROM chat_participants p JOIN chats c ON c.id = p.chat_id AND c.type = 'dm' "
            "WHERE NOT EXISTS (SELECT 1 FROM chat_inbox i "
            "WHERE i.chat_id = p.chat_id AND i.user_id = p.user_id)"
        )

    async def ping(self) -> None:
        async with self.connection() as db:
            await db.fetchone("SELECT 1")

    # -- users -------------------------------------------------------------------

    async def get_user(self, *, user_id: int | None = None, username: str | None = None) -> User | None:
        """By id, or by name: the user whose name has the same key (chat_server/names.py)."""
        key = None if username is None else name_key(username)
        cached = self._users_by_id.get(user_id) if user_id is not None else self._users_by_name.get(key)
        if cached is not None:
            return cached
        if user_id is not None:
            return (await self._user_loader.load([user_id])).get(user_id)
        return None if key is None else (await self._user_by_name_loader.load([key])).get(key)

    async def _load_users(self, column: str, keys: Sequence[Any]) -> dict[Any, User]:
        """Users by id or by name key (PRIMARY, uniq_name_key), kept in the caches."""
        marks = ", ".join(["%s"] * len(keys))
        async with self.connection() as db:
            rows = await db.fetchall(
                f"SELECT u.{column}, {_USER_COLUMNS} FROM usuarios u WHERE u.{column} IN ({marks})", keys
            )
        found = {}
        for row in rows:
            key, user = row[0], self._user(row[1:])
            found[key] = user
            self._users_by_id.put(user.id, user)
            if column == "name_key":
                self._users_by_name.put(key, user)
        return found

    async def ensure_user(self, username: str, role: Role | None = None) -> tuple[User, bool]:
        """Return the user and whether it was created (then also as a member of General). The
        role of a new user is admin for admin's name, unless given."""
        user = await self.get_user(username=username)
        if user:
            return user, False
        key = name_key(username)
        async with self.connection() as db:
            # INSERT IGNORE: a concurrent first login of the same name creates one row.
            count, _ = await db.execute(
                "INSERT IGNORE INTO usuarios (username, name_key, name_skeleton, role, creado_en) "
                "VALUES (%s, %s, %s, %s, %s)",
                (
                    username,
                    key,
                    name_skeleton(username),
                    role or ("admin" if key == ADMIN_KEY else "user"),
                    _sql_time(utc_now()),
                ),
            )
        user = await self.get_user(username=username)
        if user is None:
            # Kept out by a row without a key (made by hand, or by an older process while this
            # one started): key such rows, then look again.
            async with self.transaction() as db:
                await self._key_names(db)
            user = await self.get_user(username=username)
        if user is None:
            raise BadRequest("this name cannot be used: an older user has it", username=username)
        if count:
            await self._join_new_user(user)
        return user, bool(count)

    async def looks_taken(self, username: str) -> bool:
        """Whether another user's name looks like this one (the same skeleton, another key)."""
        async with self.connection() as db:
            # idx_name_skeleton
            row = await db.fetchone(
                "SELECT 1 FROM usuarios WHERE name_skeleton = %s AND name_key <> %s LIMIT 1",
                (name_skeleton(username), name_key(username)),
            )
        return row is not None

    async def _key_names(self, db: Db) -> None:
        """Fill usuarios.name_key and name_skeleton where missing: every user at the first start
        after the columns were added, and users made outside the server since. In id order, so
        when two old names share a key (look-alikes the old comparison told apart, such as
        `admin` and `admin` with a mathematical bold a on MariaDB), the older user keeps it; the
        newer one's key gets its id appended, and it is reached by its token or cookie, no
        longer by name."""
        rows = await db.fetchall(
            "SELECT id, username, name_key FROM usuarios "
            "WHERE name_key IS NULL OR name_skeleton IS NULL ORDER BY id"
        )
        if not rows:
            return
        taken = {
            row[0] for row in await db.fetchall("SELECT name_key FROM usuarios WHERE name_key IS NOT NULL")
        }
        filled: list[tuple[int, str, str]] = []
        for user_id, username, key in rows:
            if key is None:
                key = name_key(str(username))
                if key in taken:
                    log.warning(
                        "user %s (%r) has the name key of an older user: keyed by its id", user_id, username
                    )
                    key = f"{key[: MAX_KEY_CHARS - 12]}\x1f{user_id}"
                taken.add(key)
            filled.append((int(user_id), str(key), name_skeleton(str(username))))
        # Many rows per statement: the first start on a big table is a few statements, not one per user.
        for start in range(0, len(filled), KEY_BATCH):
            batch = filled[start : start + KEY_BATCH]
            cases = "WHEN %s THEN %s " * len(batch)
            await db.execute(
                f"UPDATE usuarios SET name_key = CASE id {cases}END, name_skeleton = CASE id {cases}END "
                f"WHERE id IN ({', '.join(['%s'] * len(batch))})",
                [
                    *(v for user_id, key, _ in batch for v in (user_id, key)),
                    *(v for user_id, _, shape in batch for v in (user_id, shape)),
                    *(user_id for user_id, _, _ in batch),
                ],
            )

    async def _join_new_user(self, user: User) -> None:
        # The DM with admin is made by the caller (service.ensure_user), which announces it.
        async with self.connection() as db:
            await db.execute(
                "INSERT IGNORE INTO chat_participants (chat_id, user_id) VALUES (%s, %s)",
                (self.general_id, user.id),
            )

    async def start_reading_general(self, user: User) -> None:
        """Unless the user has one, a read marker in General at its newest message: a person
        arriving starts with General read (its history is there to scroll, but not new)."""
        async with self.connection() as db:
            if await db.fetchone(
                "SELECT 1 FROM chat_reads WHERE chat_id = %s AND user_id = %s",  # primary key
                (self.general_id, user.id),
            ):
                return
            # Read first, then insert: INSERT ... SELECT would lock the messages it reads and
            # deadlock with concurrent message inserts.
            row = await db.fetchone(
                "SELECT COALESCE(MAX(id), 0) FROM mensajes_v2 WHERE chat_id = %s",  # idx_chat_id
                (self.general_id,),
            )
            await db.execute(
                "INSERT IGNORE INTO chat_reads (chat_id, user_id, last_read_id) VALUES (%s, %s, %s)",
                (self.general_id, user.id, max(row[0], 0) if row else 0),  # >= 0: see mark_read
            )

    # -- chats -------------------------------------------------------------------

    async def get_chat(self, chat_id: int) -> Chat | None:
        """The chat and its participants, without its last message."""
        chat = self._chats.get(chat_id)
        return chat if chat is not None else (await self._chat_loader.load([chat_id])).get(chat_id)

    async def general_chat(self) -> Chat:
        chat = await self.get_chat(self.general_id)
        assert chat is not None
        return chat

    async def dm_partners(self, user: User) -> list[int]:
        """The other participant of each of the user's DMs."""
        return (await self._partner_loader.load([user.id])).get(user.id, [])

    async def _load_dm_partners(self, user_ids: Sequence[int]) -> dict[int, list[int]]:
        marks = ", ".join(["%s"] * len(user_ids))
        async with self.connection() as db:
            rows = await db.fetchall(
                "SELECT i.user_id, p.user_id FROM chat_inbox i "
                "JOIN chat_participants p ON p.chat_id = i.chat_id "  # uniq_chat_user
                f"WHERE i.user_id IN ({marks}) AND p.user_id <> i.user_id",  # idx_inbox_activity
                user_ids,
            )
        partners: dict[int, list[int]] = {}
        for user_id, partner_id in rows:
            partners.setdefault(int(user_id), []).append(int(partner_id))
        return partners

    async def inbox_page(
        self, user: User, limit: int, after: InboxPosition | None
    ) -> tuple[list[Chat], InboxPosition | None]:
        """One page of the user's chat list, with their unread counts: General first (on the first
        page, `after` None), then their DMs by latest activity (newest message id, then chat id,
        both descending). The DMs are one range of idx_inbox_activity, so a page costs the same
        whatever the number of chats. Returns the page and where the next one starts (None when
        no DM follows)."""
        general = [] if after is not None else [await self._general_for(user)]
        wanted = limit - len(general)
        async with self.connection() as db:
            keyset, args = "", [user.id]
            if after is not None:
                condition, more = self.inbox_after(after)
                keyset, args = " AND " + condition, [*args, *more]
            rows = await db.fetchall(
                f"SELECT chat_id, last_message_id, unread FROM {self.inbox_by_activity} WHERE user_id = %s"
                + keyset
                + " ORDER BY last_message_id DESC, chat_id DESC LIMIT %s",  # idx_inbox_activity
                [*args, wanted + 1],
            )
        entries = [(int(c), int(m), int(u)) for c, m, u in rows]
        page = entries[:wanted]
        following = None
        if len(entries) > wanted:
            following = InboxPosition(page[-1][1], page[-1][0]) if page else InboxPosition.TOP
        return [*general, *await self._inbox_chats(page)], following

    async def find_chats_by_name(self, user: User, prefix: str, limit: int) -> list[Chat]:
        """The user's DMs whose other participant's name starts with `prefix` (compared like
        login's names), by that name. With few DMs, they are read and filtered (at most
        MANY_DMS); with many (the admin), the username index is read in name order from the
        prefix, each name joined to the user's inbox, until `limit` are found."""
        match, args = self.username_prefix(prefix)
        async with self.connection() as db:
            count = await db.fetchone(
                "SELECT COUNT(*) FROM (SELECT 1 FROM chat_inbox WHERE user_id = %s LIMIT %s) AS few",
                (user.id, MANY_DMS),  # idx_inbox_activity
            )
            names_first = count is not None and int(count[0]) >= MANY_DMS
            join = self.names_first_join if names_first else "JOIN "
            rows = await db.fetchall(
                (self.names_first_select if names_first else "SELECT ")
                + "i.chat_id, i.last_message_id, i.unread FROM usuarios u "
                + join
                + "chat_participants p ON p.user_id = u.id "  # idx_user
                + join
                + "chat_inbox i ON i.chat_id = p.chat_id AND i.user_id = %s "  # primary key
                + f"WHERE {match} AND u.id <> %s ORDER BY {self.username_order} LIMIT %s",
                [user.id, *args, user.id, limit],
            )
        return await self._inbox_chats([(int(c), int(m), int(u)) for c, m, u in rows])

    @staticmethod
    def inbox_after(after: InboxPosition) -> tuple[str, list[Any]]:
        """The inbox entries after a position (newest message id, chat id; both descending), as
        one range of idx_inbox_activity: MariaDB's range optimiser reads this OR as two ranges."""
        condition = "(last_message_id < %s OR (last_message_id = %s AND chat_id < %s))"
        return condition, [after.activity, after.activity, after.chat_id]

    @staticmethod
    def username_prefix(prefix: str) -> tuple[str, list[Any]]:
        """A condition on the name key starting with the prefix's key (the same comparison as
        login's), and its arguments: a range of uniq_name_key, [key, key + the last code point)."""
        key = name_key(prefix)
        return "u.name_key >= %s AND u.name_key < %s", [key, key + "\U0010ffff"]

    async def dm_read_markers(self, chat_ids: Sequence[int]) -> dict[int, dict[int, int]]:
        """Per DM, its participants' read markers (user id -> last_read_id): two rows a DM."""
        if not chat_ids:
            return {}
        marks = ", ".join(["%s"] * len(chat_ids))
        async with self.connection() as db:
            rows = await db.fetchall(
                # The primary key (chat_id, user_id) answers it.
                f"SELECT chat_id, user_id, last_read_id FROM chat_reads WHERE chat_id IN ({marks})",
                list(chat_ids),
            )
        reads: dict[int, dict[int, int]] = {}
        for chat_id, user_id, last in rows:
            reads.setdefault(int(chat_id), {})[int(user_id)] = int(last)
        return reads

    async def _general_for(self, user: User) -> Chat:
        """General with its newest message and the user's unread count there (the messages of
        others after their marker: one range of idx_chat_id)."""
        general = self.general_id
        async with self.connection() as db:
            row = await db.fetchone(
                "SELECT (SELECT MAX(id) FROM mensajes_v2 WHERE chat_id = %s), "
                "(SELECT COUNT(*) FROM mensajes_v2 m WHERE m.chat_id = %s AND m.sender_id <> %s "
                "AND m.id > COALESCE((SELECT last_read_id FROM chat_reads "
                "WHERE chat_id = %s AND user_id = %s), 0))",
                (general, general, user.id, general, user.id),
            )
        assert row is not None
        (chat,) = await self._inbox_chats([(general, int(row[0] or 0), int(row[1]))])
        return chat

    async def _inbox_chats(self, entries: Sequence[tuple[int, int, int]]) -> list[Chat]:
        """(chat id, newest message id, unread) as chats, in that order: participants from the
        cache, the newest messages by primary key, the DMs' read markers."""
        chats = await self._chats_cached([chat_id for chat_id, _, _ in entries])
        newest = [message_id for _, message_id, _ in entries if message_id]
        last: dict[int, Message] = {}
        if newest:
            marks = ", ".join(["%s"] * len(newest))
            async with self.connection() as db:
                rows = await db.fetchall(_MESSAGE_SELECT + f"WHERE m.id IN ({marks})", newest)
            last = {m.id: m for m in map(self._message, rows)}
        reads = await self.dm_read_markers(
            [chat_id for chat_id, _, _ in entries if chat_id != self.general_id]
        )
        return [
            replace(
                chats[chat_id], last_message=last.get(message_id), unread=unread, reads=reads.get(chat_id, {})
            )
            for chat_id, message_id, unread in entries
            if chat_id in chats
        ]

    async def _chats_cached(self, ids: Sequence[int]) -> dict[int, Chat]:
        found = {i: c for i in ids if (c := self._chats.get(i)) is not None}
        found.update(await self._chat_loader.load([i for i in ids if i not in found]))
        return found

    async def mark_read(self, chat_id: int, user: User, last_read_id: int) -> tuple[ReadMarker, bool]:
        """Move the user's marker in the chat forward to `last_read_id`, never back and never past
        the chat's newest message. The marker with its unread count, and whether it moved."""
        return await retry_deadlocks(lambda: self._mark_read(chat_id, user, last_read_id))

    async def _mark_read(self, chat_id: int, user: User, last_read_id: int) -> tuple[ReadMarker, bool]:
        dm = chat_id != self.general_id  # General has no inbox rows
        async with self.transaction() as db:
            if dm:
                # The DM's inbox row first: a message insert into this chat updates it too, so it
                # either committed before the count below sees it, or adds its +1 after ours.
                await db.fetchone(
                    "SELECT unread FROM chat_inbox WHERE chat_id = %s AND user_id = %s FOR UPDATE",
                    (chat_id, user.id),
                )
            row = await db.fetchone("SELECT MAX(id) FROM mensajes_v2 WHERE chat_id = %s", (chat_id,))
            # Copied legacy messages (ids below 0) are history, never unread: a marker stays >= 0.
            newest = max(int(row[0]), 0) if row and row[0] is not None else 0
            target = min(last_read_id, newest)
            # Two portable statements instead of an upsert: the UPDATE only ever raises the marker.
            inserted, _ = await db.execute(
                "INSERT IGNORE INTO chat_reads (chat_id, user_id, last_read_id) VALUES (%s, %s, %s)",
                (chat_id, user.id, target),
            )
            moved = bool(inserted) and target > 0
            if not inserted:
                raised, _ = await db.execute(
                    "UPDATE chat_reads SET last_read_id = %s "
                    "WHERE chat_id = %s AND user_id = %s AND last_read_id < %s",
                    (target, chat_id, user.id, target),
                )
                moved = bool(raised)
            row = await db.fetchone(
                "SELECT r.last_read_id, (SELECT COUNT(*) FROM mensajes_v2 m WHERE m.chat_id = r.chat_id "
                "AND m.id > r.last_read_id AND m.sender_id <> r.user_id) "  # idx_chat_id
                "FROM chat_reads r WHERE r.chat_id = %s AND r.user_id = %s",
                (chat_id, user.id),
            )
            assert row is not None
            marker = ReadMarker(chat_id, int(row[0]), int(row[1]))
            if dm:
                await db.execute(
                    "UPDATE chat_inbox SET unread = %s WHERE chat_id = %s AND user_id = %s",
                    (marker.unread, chat_id, user.id),
                )
        return marker, moved

    async def _load_chats(self, ids: Sequence[int]) -> dict[int, Chat]:
        """Chats (without their last message) by id with their participants, in one query
        whatever their number (no N+1), kept in the cache."""
        marks = ", ".join(["%s"] * len(ids))
        async with self.connection() as db:
            # A row per DM participant, one for General: its participants are everyone, not
            # listed, so the answer stays small. (PRIMARY, uniq_chat_user, PRIMARY)
            rows = await db.fetchall(
                f"SELECT c.id, c.type, c.name, {_USER_COLUMNS} FROM chats c "
                "LEFT JOIN chat_participants p ON p.chat_id = c.id AND c.type = 'dm' "
                f"LEFT JOIN usuarios u ON u.id = p.user_id WHERE c.id IN ({marks})",
                ids,
            )
        chats = {int(row[0]): row[1:3] for row in rows}
        members: dict[int, list[User]] = {}
        for row in sorted(rows, key=lambda r: (r[0], r[3] or 0)):  # by chat, then user id
            if row[3] is not None:
                members.setdefault(int(row[0]), []).append(self._user(row[3:]))
        found = {i: Chat(i, kind, name, tuple(members.get(i, ()))) for i, (kind, name) in chats.items()}
        for chat in found.values():
            self._chats.put(chat.id, chat)
        return found

    async def get_or_create_dm(self, a: User, b: User) -> tuple[Chat, bool]:
        """The one DM of a pair of users; `dm_pairs`' primary key keeps it unique under races."""
        low, high = sorted((a.id, b.id))
        existing = await self._dm_of_pair(low, high)
        if existing is not None:
            return existing, False
        return await retry_deadlocks(lambda: self._create_dm(low, high))

    async def _dm_of_pair(self, low: int, high: int) -> Chat | None:
        async with self.connection() as db:
            row = await db.fetchone(
                "SELECT chat_id FROM dm_pairs WHERE user_low = %s AND user_high = %s", (low, high)
            )
        return None if row is None else await self.get_chat(row[0])

    async def _create_dm(self, low: int, high: int) -> tuple[Chat, bool]:
        created = False
        async with self.transaction() as db:
            _, chat_id = await db.execute(
                "INSERT INTO chats (type, name, creado_en) VALUES ('dm', NULL, %s)",
                (_sql_time(utc_now()),),
            )
            count, _ = await db.execute(
                "INSERT IGNORE INTO dm_pairs (user_low, user_high, chat_id) VALUES (%s, %s, %s)",
                (low, high, chat_id),
            )
            if count:
                created = True
                for uid in (low, high):
                    await db.execute(
                        "INSERT IGNORE INTO chat_participants (chat_id, user_id) VALUES (%s, %s)",
                        (chat_id, uid),
                    )
                    await db.execute(
                        "INSERT IGNORE INTO chat_inbox (chat_id, user_id) VALUES (%s, %s)", (chat_id, uid)
                    )
            else:
                # Another request made it first: drop our chat row and use theirs.
                await db.execute("DELETE FROM chats WHERE id = %s", (chat_id,))
        # Read after commit, so the winner's row is visible whatever the isolation level.
        chat = await self.get_chat(chat_id) if created else await self._dm_of_pair(low, high)
        assert chat
        return chat, created

    # -- messages ----------------------------------------------------------------

    async def add_message(self, chat_id: int, sender: User, contenido: str) -> Message:
        """Store a message; its id and time come back without a re-read. Concurrent calls share
        one INSERT where the database can return the ids of a multi-row insert."""
        moment = utc_now()
        message_id = await self._batcher.insert((chat_id, sender.id, contenido, _sql_time(moment)))
        self.messages_stored += 1
        members = await self.members_of([chat_id])
        return Message(
            message_id, chat_id, sender.id, sender.username, contenido, moment, members.get(chat_id, ())
        )

    def _batch_connection(self) -> AbstractAsyncContextManager[Db]:
        return self.connection()

    async def insert_messages(self, db: Db, rows: Sequence[Row]) -> list[int]:
        """Insert (chat_id, sender_id, contenido, time) rows in order, and move their DMs up in
        their participants' inboxes, in one transaction. Returns the new ids, in order.

        A batch of General's messages alone, where one statement carries it (one row, or
        INSERT ... RETURNING), is that one statement in autocommit: atomic by itself, with no
        inbox rows to keep with it, and without the BEGIN and COMMIT round trips (a quarter of
        the server's CPU per post at 200 posts/s: docs/scaling.md). A batch of one DM row (nearly
        all of them below a few hundred posts/s) is its INSERT and its inbox upsert, which takes
        the new id from LAST_INSERT_ID(), sent as one transaction in one round trip (`Db.atomic`)
        instead of four. Otherwise: its INSERT (one INSERT ... RETURNING, or without RETURNING
        one INSERT a row: docs/design.md, "MySQL 8") and its DMs' inbox rows commit together."""
        chats = {row[0] for row in rows}
        if (self.returning or len(rows) == 1) and chats == {self.general_id}:
            return await self._insert_rows(db, rows)
        if len(rows) == 1:
            upsert = self._inbox_upsert(rows, None, await self._members_on(db, chats))
            results = await db.atomic([(INSERT_ONE_MESSAGE, rows[0]), *([upsert] if upsert else [])])
            return [results[0][1]]
        async with db.transaction() as tx:
            ids = await self._insert_rows(tx, rows)
            upsert = self._inbox_upsert(rows, ids, await self._members_on(tx, chats))
            if upsert:
                await tx.execute(*upsert)
        return ids

    async def _insert_rows(self, db: Db, rows: Sequence[Row]) -> list[int]:
        if not self.returning or len(rows) == 1:
            # A single-row INSERT's id is exactly LAST_INSERT_ID() (the cursor's lastrowid) on
            # every server; a multi-row INSERT's other ids are not promised (docs/design.md).
            # One row (most batches below a few hundred posts/s) goes this way with RETURNING
            # too: its answer is an OK packet, not a result set for PyMySQL to parse.
            ids = []
            for row in rows:
                _, new_id = await db.execute(INSERT_ONE_MESSAGE, row)
                ids.append(new_id)
        else:
            returned = await db.fetchall(
                INSERT_MESSAGE + ", ".join([ONE_ROW] * len(rows)) + RETURNING_ID,
                [value for row in rows for value in row],
            )
            # One statement's auto-increment ids grow row by row; RETURNING's own order is not
            # promised (SQLite says so), the ids' order is.
            ids = sorted(int(r[0]) for r in returned)
        assert len(ids) == len(rows)
        return ids

    def _inbox_upsert(
        self, rows: Sequence[Row], ids: Sequence[int] | None, members: dict[int, tuple[int, ...]]
    ) -> tuple[str, list[Any]] | None:
        """One upsert for the whole batch: per DM participant, the newest id and +1 unread for
        each message of someone else; None when no DM is in it. `ids` None: a one-row batch
        whose id is the last insert's, on the same connection. Rows in key order, so concurrent
        batches lock them in the same order (no deadlock between them)."""
        changes: dict[tuple[int, int], list[int]] = {}  # (chat, user) -> [newest id, new unread]
        for (chat_id, sender_id, *_), message_id in zip(rows, ids or [0], strict=True):
            for user_id in members.get(chat_id, ()):
                change = changes.setdefault((chat_id, user_id), [0, 0])
                change[0] = max(change[0], message_id)
                change[1] += user_id != sender_id
        if not changes:
            return None
        keys = sorted(changes)
        if ids is None:  # the id is not known yet: the INSERT before it, in its transaction, made it
            values = f"(%s, %s, {self.last_insert_id}, %s)"
            args = [v for key in keys for v in (*key, changes[key][1])]
        else:
            values = "(%s, %s, %s, %s)"
            args = [v for key in keys for v in (*key, *changes[key])]
        sql = "INSERT INTO chat_inbox (chat_id, user_id, last_message_id, unread) VALUES "
        return sql + ", ".join([values] * len(keys)) + self.inbox_upsert, args

    async def members_of(self, chat_ids: Iterable[int]) -> dict[int, tuple[int, ...]]:
        """Each DM's participant ids (General's are everyone: not listed), from the chat cache."""
        chats = await self._chats_cached([c for c in set(chat_ids) if c != self.general_id])
        return {c.id: tuple(p.id for p in c.participants) for c in chats.values() if not c.is_general}

    async def _members_on(self, db: Db, chat_ids: set[int]) -> dict[int, tuple[int, ...]]:
        """`members_of`, on the connection of a transaction: the cache, else one query (on
        SQLite another connection would wait for this transaction's lock)."""
        members: dict[int, tuple[int, ...]] = {}
        missing = []
        for chat_id in chat_ids - {self.general_id}:
            chat = self._chats.get(chat_id)
            if chat is None:
                missing.append(chat_id)
            elif not chat.is_general:
                members[chat_id] = tuple(p.id for p in chat.participants)
        if missing:
            marks = ", ".join(["%s"] * len(missing))
            rows = await db.fetchall(
                "SELECT p.chat_id, p.user_id FROM chat_participants p JOIN chats c ON c.id = p.chat_id "
                f"WHERE p.chat_id IN ({marks}) AND c.type = 'dm'",  # uniq_chat_user
                missing,
            )
            found: dict[int, list[int]] = {}
            for chat_id, user_id in rows:
                found.setdefault(int(chat_id), []).append(int(user_id))
            members.update((chat_id, tuple(sorted(users))) for chat_id, users in found.items())
        return members

    async def list_messages(
        self,
        chat_id: int,
        *,
        after_id: int | None = None,
        before_id: int | None = None,
        limit: int = DEFAULT_PAGE,
    ) -> list[Message]:
        """Oldest first. With `after_id`, the first `limit` after it in id order: what arrived
        since (polling), new messages only. Otherwise the latest `limit` in time order (timestamp,
        then id), before message `before_id` when given: history, where copied legacy messages
        (ids below 0) sit among the others by their time (docs/design.md, "Legacy history")."""
        if after_id is not None:
            where, args = "m.chat_id = %s AND m.id > %s", [chat_id, after_id]
            if before_id is not None:
                where, args = where + " AND m.id < %s", [*args, before_id]
            sql = _MESSAGE_SELECT + f"WHERE {where} ORDER BY m.id LIMIT %s"  # idx_chat_id (chat_id, id)
            async with self.connection() as db:
                return [self._message(r) for r in await db.fetchall(sql, [*args, limit])]
        where, args = "m.chat_id = %s", [chat_id]
        async with self.connection() as db:
            if before_id is not None:
                condition, values = await self._before(db, chat_id, before_id)
                where, args = where + condition, [*args, *values]
            # idx_chat_time (chat_id, timestamp), which InnoDB and SQLite extend with the id.
            sql = _MESSAGE_SELECT + f"WHERE {where} ORDER BY m.timestamp DESC, m.id DESC LIMIT %s"
            rows = await db.fetchall(sql, [*args, limit])
        return [self._message(r) for r in reversed(rows)]

    @staticmethod
    async def _before(db: Db, chat_id: int, before_id: int) -> tuple[str, list[Any]]:
        """The condition "before message `before_id`" in time order; for an id that is no message
        of the chat (a client asking for the newest page with a large id), "id below it"."""
        row = await db.fetchone(
            "SELECT timestamp FROM mensajes_v2 WHERE id = %s AND chat_id = %s", (before_id, chat_id)
        )
        if row is None or row[0] is None:
            return " AND m.id < %s", [before_id]
        # The timestamp goes back exactly as read, so the comparison is the column's own.
        return " AND (m.timestamp < %s OR (m.timestamp = %s AND m.id < %s))", [row[0], row[0], before_id]

    async def messages_since(
        self, chat_ids: Sequence[int], after_id: int, upto_id: int, limit: int
    ) -> list[Message]:
        """Messages of these chats with after_id < id <= upto_id in id order: a stream's replay."""
        if not chat_ids:
            return []
        marks = ", ".join(["%s"] * len(chat_ids))
        async with self.connection() as db:
            rows = await db.fetchall(
                _MESSAGE_SELECT + f"WHERE m.chat_id IN ({marks}) AND m.id > %s AND m.id <= %s "
                "ORDER BY m.id LIMIT %s",  # idx_chat_id
                [*chat_ids, after_id, upto_id, limit],
            )
        return [self._message(r) for r in rows]

    async def replay_for_user(
        self, user: User, after_id: int, upto_id: int, limit: int
    ) -> list[Message] | None:
        """A per-user stream's replay: the messages of General and of the user's DMs with
        after_id < id <= upto_id, in id order, at most `limit`; None when more are missing.
        Only the DMs active since `after_id` are read (a range of idx_inbox_activity): each
        has a newer message, so more than `limit` of them means more than `limit` messages."""
        async with self.connection() as db:
            rows = await db.fetchall(
                f"SELECT chat_id FROM {self.inbox_by_activity} WHERE user_id = %s AND last_message_id > %s "
                "ORDER BY last_message_id LIMIT %s",  # idx_inbox_activity
                (user.id, after_id, limit),
            )
        if len(rows) >= limit:
            return None
        missed = await self.messages_since([self.general_id, *(r[0] for r in rows)], after_id, upto_id, limit)
        return missed if len(missed) < limit else None

    async def messages_after(self, after_id: int, limit: int) -> list[Message]:
        """Every chat's messages after `after_id`, in id order (the primary key's range), with
        their DMs' participants (for the hub's routing to per-user streams)."""
        async with self.connection() as db:
            rows = await db.fetchall(
                _MESSAGE_SELECT + "WHERE m.id > %s ORDER BY m.id LIMIT %s", (after_id, limit)
            )
        messages = [self._message(r) for r in rows]
        members = await self.members_of(m.chat_id for m in messages)
        return [replace(m, members=members.get(m.chat_id, ())) for m in messages]

    async def search_messages(
        self, user: User, words: Sequence[str], chat_id: int | None, before_id: int | None, limit: int
    ) -> list[Message]:
        """Messages with every word, newest first: in one chat (the caller checked that the user
        may read it), or in General and the user's DMs. The full-text index finds them."""
        where, args = [self.fulltext_match], list[Any]([self.fulltext_query(words)])
        if chat_id is not None:
            where.append("m.chat_id = %s")
            args.append(chat_id)
        else:
            where.append(
                "(m.chat_id = %s OR EXISTS (SELECT 1 FROM chat_participants p "
                "WHERE p.chat_id = m.chat_id AND p.user_id = %s))"  # uniq_chat_user
            )
            args += [self.general_id, user.id]
        if before_id is not None:
            where.append(f"{self.fulltext_order} < %s")
            args.append(before_id)
        async with self.connection() as db:
            rows = await db.fetchall(
                _MESSAGE_COLUMNS
                + self.fulltext_from
                + " WHERE "
                + " AND ".join(where)
                + f" ORDER BY {self.fulltext_order} DESC LIMIT %s",
                [*args, limit],
            )
        return [self._message(r) for r in rows]

    # How the full-text index is joined and asked: InnoDB FULLTEXT in boolean mode, every word
    # required (the SQLite store asks FTS5 instead).
    fulltext_from = "FROM mensajes_v2 m LEFT JOIN usuarios u ON u.id = m.sender_id"
    fulltext_match = "MATCH (m.contenido) AGAINST (%s IN BOOLEAN MODE)"
    fulltext_order = "m.id"

    @staticmethod
    def fulltext_query(words: Sequence[str]) -> str:
        return " ".join(f"+{word}" for word in words)

    async def latest_message_id(self) -> int:
        """The newest new message's id; 0 when there is none. Copied legacy messages (ids below 0)
        are history: streams, their replay and the catch-up start from here and never see them."""
        async with self.connection() as db:
            row = await db.fetchone("SELECT MAX(id) FROM mensajes_v2")
        return max(int(row[0]), 0) if row and row[0] is not None else 0

    # -- rows to values ----------------------------------------------------------

    @staticmethod
    def _user(row: Row) -> User:
        return User(int(row[0]), row[1], row[2] or "user", row[3] or "N/D", _from_sql_time(row[4]))

    @staticmethod
    def _message(row: Row) -> Message:
        return Message(int(row[0]), int(row[1]), int(row[2]), row[3], row[4], _from_sql_time(row[5]))


def _sql_time(moment: datetime) -> str:
    """UTC as both stores' TIMESTAMP literal (MySQL sessions run at time_zone '+00:00')."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "seconds")  # strftime's half


def _from_sql_time(value: datetime | str | None) -> datetime:
    if value is None:
        return datetime.fromtimestamp(0, UTC)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC)


class BoundedCache(Generic[K, V]):
    """A dict that forgets its oldest entries past `size` (insertion order)."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._data: dict[K, V] = {}

    def get(self, key: K | None) -> V | None:
        return None if key is None else self._data.get(key)

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        if len(self._data) > self.size:
            del self._data[next(iter(self._data))]

    def discard(self, key: K) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()


store_key = web.AppKey("store", Store)
