"""The inbox's and search's queries are index reads on both stores: MariaDB's EXPLAIN and SQLite's
EXPLAIN QUERY PLAN of the store's own statements, with an admin of 3,000 customers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from chat_server.models import InboxPosition, Message, User
from chat_server.names import name_key
from chat_server.store import Store, open_store
from chat_server.store.base import Db, Row

from .databases import require_mysql
from .services import PrivateMariaDB

CUSTOMERS = 3000
PER_DM = 3


@pytest.fixture(scope="module")
def private_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMariaDB]:
    """MariaDB 10.11.19 crashed (an InnoDB assertion in a FULLTEXT query) while sessions loaded
    and searched several databases with full-text indexes at once (docs/design.md): this module's
    bulk loads run on a server of their own, never on the one every test shares."""
    require_mysql()
    with PrivateMariaDB(tmp_path_factory.mktemp("mariadb")) as server:
        yield server


@pytest.fixture(params=["sqlite", "mysql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/chat.sqlite3"
    else:
        url = request.getfixturevalue("private_mariadb").url(f"plans_{tmp_path.name[-20:].replace('-', '_')}")
    async for filled in _filled(url):
        yield filled


async def _filled(url: str) -> AsyncIterator[Store]:
    """An admin with CUSTOMERS DMs of PER_DM messages each, written in bulk."""
    store = open_store(url)
    await store.start()
    try:
        admin = await store.get_user(username="admin")
        assert admin is not None
        async with store.transaction() as db:
            names = [f"cliente{n:05d}" for n in range(CUSTOMERS)]
            users = await _bulk(db, "usuarios (username, name_key)", [(n, name_key(n)) for n in names])
            chats = await _bulk(db, "chats (type)", [("dm",)] * CUSTOMERS)
            pairs = list(zip(chats, users, strict=True))
            await _bulk(db, "chat_participants (chat_id, user_id)", [(c, u) for c, u in pairs])
            await _bulk(db, "chat_participants (chat_id, user_id)", [(c, admin.id) for c in chats])
            await _bulk(db, "dm_pairs (user_low, user_high, chat_id)", [(admin.id, u, c) for c, u in pairs])
            messages = [(c, u, f"pedido {n} del cliente {u}") for n in range(PER_DM) for c, u in pairs]
            ids = await _bulk(db, "mensajes_v2 (chat_id, sender_id, contenido)", messages)
            newest = {c: i for (c, _, _), i in zip(messages, ids, strict=True)}
            inbox = [
                (c, who, newest[c], PER_DM if who == admin.id else 0)
                for c, u in pairs
                for who in (u, admin.id)
            ]
            await _bulk(db, "chat_inbox (chat_id, user_id, last_message_id, unread)", inbox)
            reads = [(c, u, newest[c]) for c, u in pairs]  # the customers read their DMs
            await _bulk(db, "chat_reads (chat_id, user_id, last_read_id)", reads)
        async with store.connection() as db:
            for table in (
                "usuarios",
                "chats",
                "chat_participants",
                "mensajes_v2",
                "chat_inbox",
                "chat_reads",
            ):
                await db.execute(f"ANALYZE TABLE {table}" if "mysql" in url else f"ANALYZE {table}")
        yield store
    finally:
        await store.close()


async def _bulk(db: Db, into: str, rows: Sequence[tuple[Any, ...]]) -> list[int]:
    """Insert rows 500 at a time; their ids (auto-increment ids of one statement are consecutive)."""
    ids: list[int] = []
    marks = "(" + ", ".join(["%s"] * len(rows[0])) + ")"
    for start in range(0, len(rows), 500):
        part = rows[start : start + 500]
        _, last = await db.execute(
            f"INSERT INTO {into} VALUES " + ", ".join([marks] * len(part)), [v for r in part for v in r]
        )
        ids += (
            range(last - len(part) + 1, last + 1)
            if "sqlite" in type(db).__name__.lower()
            else range(last, last + len(part))
        )
    return ids


async def _plans(
    store: Store, monkeypatch: pytest.MonkeyPatch, call: Callable[[], Awaitable[Any]]
) -> list[str]:
    """Run `call`; the plan of every SELECT it ran, one string per table access."""
    captured: list[tuple[str, Sequence[Any]]] = []
    db_class = type(_db_of(store))
    original = db_class.fetchall

    async def spy(self: Db, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        if sql.lstrip().upper().startswith("SELECT"):
            captured.append((sql, args))
        return await original(self, sql, args)

    monkeypatch.setattr(db_class, "fetchall", spy)
    await call()
    monkeypatch.undo()
    assert captured, "the call ran no SELECT"
    plans = []
    async with store.connection() as db:
        for sql, args in captured:
            if type(store).__name__ == "SqliteStore":
                rows = await db.fetchall("EXPLAIN QUERY PLAN " + sql, args)
                plans += [f"{sql[:60]} :: {r[3]}" for r in rows]
            else:
                # id, select_type, table, type, possible_keys, key, key_len, ref, rows, Extra
                rows = await db.fetchall("EXPLAIN " + sql, args)
                plans += [
                    f"{sql[:60]} :: table={r[2]} type={r[3]} key={r[5]} rows={r[8]} extra={r[9]}"
                    for r in rows
                ]
    return plans


def _db_of(store: Store) -> Db:
    from chat_server.store.mysql import MysqlStore, _MysqlDb
    from chat_server.store.sqlite import _SqliteDb

    return _MysqlDb.__new__(_MysqlDb) if isinstance(store, MysqlStore) else _SqliteDb.__new__(_SqliteDb)


# What a plan line says when a table is read whole (MariaDB: type ALL or index; SQLite: SCAN)
# or its rows are sorted after reading.
SCANS = ("type=ALL", "type=index ", "filesort", "TEMP B-TREE FOR ORDER BY")


def _no_scans(plans: list[str]) -> None:
    """Every table is read through an index; nothing is sorted after a scan."""
    for plan in plans:
        detail = plan.split(" :: ", 1)[1]
        if "table=<derived" in detail or detail == "SCAN few":
            continue  # the rows of a bounded subquery (at most MANY_DMS), made by an index read
        assert not [s for s in SCANS if s in detail], plan
        assert not detail.startswith("SCAN ") or detail == "SCAN CONSTANT ROW", plan


async def _admin(store: Store) -> User:
    admin = await store.get_user(username="admin")
    assert admin is not None
    return admin


async def test_the_first_and_a_later_inbox_page_read_one_index_range(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = await _admin(store)
    first, following = await store.inbox_page(admin, 50, None)
    assert (len(first), following is not None) == (50, True)
    plans = await _plans(store, monkeypatch, lambda: store.inbox_page(admin, 50, None))
    _no_scans(plans)
    later = await _plans(store, monkeypatch, lambda: store.inbox_page(admin, 50, following))
    _no_scans(later)
    # A range that starts at the position, not the user's whole index entry read from the top
    # (MariaDB's `ref`, which skips every chat above the position).
    inbox = [p for p in later if "FROM chat_inbox" in p]
    assert [
        p for p in inbox if "type=range key=idx_inbox_activity" in p or "last_message_id" in p.split("::")[1]
    ], inbox
    # A position in the middle of equal activity (chats without messages tie at 0) is a range too.
    _no_scans(await _plans(store, monkeypatch, lambda: store.inbox_page(admin, 50, InboxPosition(0, 1500))))


async def test_name_search_reads_the_username_index(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    admin = await _admin(store)
    found = await store.find_chats_by_name(admin, "cliente012", 20)
    assert [c.participants[1].username for c in found][:2] == ["cliente01200", "cliente01201"]
    plans = await _plans(store, monkeypatch, lambda: store.find_chats_by_name(admin, "cliente0", 20))
    _no_scans(plans)
    # The admin's: names in order from the prefix, each joined to the admin's inbox.
    assert [p for p in plans if "key=uniq_name_key" in p or "INDEX uniq_name_key (name_key>" in p], plans


async def test_message_search_reads_the_full_text_index(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = await _admin(store)
    found = await store.search_messages(admin, ["cliente", "2999"], None, None, 10)
    assert found, "the words are in the last customer's messages"
    search = lambda: store.search_messages(admin, ["pedido"], None, 1000, 10)  # noqa: E731
    plans = await _plans(store, monkeypatch, search)
    assert [p for p in plans if "key=ft_contenido" in p or "SCAN mensajes_fts VIRTUAL TABLE" in p], plans
    # MariaDB sorts what its full-text index found; FTS5 gives the newest first.
    _no_scans([p.replace("Using filesort", "") for p in plans if "SCAN mensajes_fts VIRTUAL TABLE" not in p])


async def test_a_per_user_replay_reads_the_active_chats_only(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = await _admin(store)
    newest = await store.latest_message_id()

    async def replay() -> list[Message] | None:
        return await store.replay_for_user(admin, newest - 5, newest, 1001)

    missed = await replay()
    assert [m.id for m in missed or []] == list(range(newest - 4, newest + 1))
    # The missed messages are merged from their chats' ranges (sorted: at most the replay limit).
    plans = await _plans(store, monkeypatch, replay)
    _no_scans([p.replace("Using filesort", "").replace("USE TEMP B-TREE FOR ORDER BY", "-") for p in plans])
