"""The hot reads are served from indexes on MariaDB: EXPLAIN of the store's own queries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from chat_server.models import User
from chat_server.store.base import Db, Row
from chat_server.store.mysql import MysqlStore, _MysqlDb

from .databases import throwaway_database


@pytest.fixture
async def store() -> AsyncIterator[MysqlStore]:
    with throwaway_database() as url:
        store = MysqlStore(url)
        await store.start()
        try:
            yield store
        finally:
            await store.close()


async def _fill(store: MysqlStore, chats: int, per_chat: int) -> tuple[User, list[int]]:
    user, _ = await store.ensure_user("ana")
    chat_ids = [store.general_id]
    for i in range(chats - 1):
        other, _ = await store.ensure_user(f"u{i}")
        chat, _ = await store.get_or_create_dm(user, other)
        chat_ids.append(chat.id)
    rows = [(c, user.id, f"m{n}") for n in range(per_chat) for c in chat_ids]
    async with store.connection() as db:
        for start in range(0, len(rows), 1000):
            part = rows[start : start + 1000]
            await db.execute(
                "INSERT INTO mensajes_v2 (chat_id, sender_id, contenido) VALUES "
                + ", ".join(["(%s, %s, %s)"] * len(part)),
                [v for row in part for v in row],
            )
        await db.execute("ANALYZE TABLE mensajes_v2")
    return user, chat_ids


async def _plans(store: MysqlStore, monkeypatch: pytest.MonkeyPatch, call: Any) -> list[dict[str, Any]]:
    """Run `call`, capturing every SELECT on mensajes_v2, and return their EXPLAIN rows."""
    captured: list[tuple[str, Sequence[Any]]] = []
    original = _MysqlDb.fetchall

    async def spy(self: Db, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        if "mensajes_v2" in sql:
            captured.append((sql, args))
        return await original(self, sql, args)  # type: ignore[arg-type]

    monkeypatch.setattr(_MysqlDb, "fetchall", spy)
    await call()
    monkeypatch.undo()
    plans = []
    async with store.connection() as db:
        for sql, args in captured:
            cursor_rows = await db.fetchall("EXPLAIN " + sql, args)
            plans.extend(_explain_dicts(cursor_rows))
    assert plans, "the call ran no query on mensajes_v2"
    return plans


def _explain_dicts(rows: list[Row]) -> list[dict[str, Any]]:
    # EXPLAIN columns: id, select_type, table, type, possible_keys, key, key_len, ref, rows, Extra
    names = ("id", "select_type", "table", "type", "possible_keys", "key", "key_len", "ref", "rows", "extra")
    return [dict(zip(names, row, strict=False)) for row in rows]


def _message_table_plans(plans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in plans if p["table"] == "m" or p["table"] == "mensajes_v2"]


@pytest.mark.parametrize("page", ["latest", "after_id", "before_id", "before_id_elsewhere"])
async def test_history_and_polling_read_through_the_chat_index(
    store: MysqlStore, monkeypatch: pytest.MonkeyPatch, page: str
) -> None:
    _, chat_ids = await _fill(store, chats=20, per_chat=300)
    # Message 3004 is in chat_ids[3] (rows go round the chats); 3000 is in another chat.
    kwargs = {
        "latest": {},
        "after_id": {"after_id": 3000},
        "before_id": {"before_id": 3004},
        "before_id_elsewhere": {"before_id": 3000},
    }[page]
    plans = await _plans(store, monkeypatch, lambda: store.list_messages(chat_ids[3], **kwargs))
    # Polling follows ids; history pages follow time (timestamp, then the id InnoDB appends).
    index = "idx_chat_id" if page == "after_id" else "idx_chat_time"
    pages = [p for p in _message_table_plans(plans) if p["table"] == "m"]
    assert len(pages) == 1, plans
    for plan in pages:
        assert plan["key"] == index, plan
        assert plan["type"] in ("ref", "range"), plan
        assert "filesort" not in (plan["extra"] or ""), plan
    # The before_id cursor's own row is found by its primary key.
    assert all(p["key"] == "PRIMARY" for p in _message_table_plans(plans) if p["table"] != "m"), plans


async def test_stream_replay_reads_through_an_index(
    store: MysqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, chat_ids = await _fill(store, chats=20, per_chat=300)
    replay = lambda: store.messages_since(chat_ids[:3], after_id=5000, upto_id=5500, limit=1001)  # noqa: E731
    plans = await _plans(store, monkeypatch, replay)
    for plan in _message_table_plans(plans):
        assert plan["key"] in ("PRIMARY", "idx_chat_id"), plan
        assert plan["type"] == "range", plan
