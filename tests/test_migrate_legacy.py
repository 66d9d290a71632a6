"""python -m chat_server migrate-legacy: the seed's legacy `mensajes` rows copied into the v2 chats.

MariaDB runs on a database made from the seed's own SQL; SQLite on the store's schema. The
100,000-row timing runs only with CHAT_BENCH=1 (see test_a_hundred_thousand_rows_in_under_a_minute).
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymysql
import pytest

from chat_server.migrate_legacy import LegacyMigration, Report, migrate_legacy
from chat_server.models import User
from chat_server.store import Store, open_store

from .databases import HOST, PORT, create_database, run_sql, throwaway_database

SEED_SQL = Path(__file__).with_name("seed_schema.sql")
ROOT = Path(__file__).resolve().parent.parent

# (id, usuario, mensaje, timestamp UTC, tipo_usuario, destinatario): the ids are not in time order.
LEGACY = [
    (1, "ana", "hola a todos 👋", "2025-03-01 14:00:05", "cliente", None),
    (2, "admin", "bienvenida, ana", "2025-03-01 14:01:00", "admin", "ana"),
    (3, "Lucía", "¿alguien? ñandú 🇵🇪 中文", "2025-03-01 13:59:59", "cliente", None),
    (4, "ANA", "respuesta privada 😀", "2025-03-01 14:02:00", "cliente", "admin"),
    (5, "soporte", "aviso del sistema", "2025-03-01 14:00:05", "admin", None),
    (6, "pedro", "hola lucía", "2025-03-01 14:03:00", "cliente", "lucia"),
    (7, "beto", "destinatario vacío", "2025-03-01 14:04:00", "cliente", ""),
    (8, "   ", "sin nombre", "2025-03-01 14:05:00", "cliente", None),
    (9, "ana", "nota para mí", "2025-03-01 14:06:00", "cliente", "Ana"),
]
# legacy id -> (chat, sender) where it must land; 8 and 9 cannot be copied.
EXPECTED = {
    1: ("general", "ana"),
    2: ("admin+ana", "admin"),
    3: ("general", "Lucía"),
    4: ("admin+ana", "ana"),
    5: ("general", "soporte"),
    6: ("Lucía+pedro", "pedro"),
    7: ("general", "beto"),
}


@dataclass
class LegacyDb:
    """The database under test, reached without the store: as the seed's PHP app would."""

    url: str
    kind: str

    def execute(self, sql: str, rows: Sequence[Sequence[Any]] = ((),)) -> None:
        with self.connect() as conn:
            for args in rows:
                conn.cursor().execute(self._sql(sql), tuple(args))
            conn.commit()

    def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.cursor()
            cur.execute(self._sql(sql), tuple(args))
            return [tuple(r) for r in cur.fetchall()]

    def insert_legacy(self, rows: Sequence[Sequence[Any]]) -> None:
        self.execute(
            "INSERT INTO mensajes (id, usuario, mensaje, timestamp, tipo_usuario, destinatario) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            rows,
        )

    def _sql(self, sql: str) -> str:
        return sql.replace("%s", "?") if self.kind == "sqlite" else sql

    @contextmanager
    def connect(self) -> Iterator[Any]:
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.url.removeprefix("sqlite:///"))) as conn:
                yield conn
        else:
            conn = pymysql.connect(
                host=HOST,
                port=PORT,
                user="root",
                database=self.url.rsplit("/", 1)[1],
                charset="utf8mb4",
                init_command="SET time_zone = '+00:00'",
            )
            with closing(conn):
                yield conn


@contextmanager
def seed_made_database() -> Iterator[LegacyDb]:
    """A MariaDB database made by hand from the seed's SQL, as the legacy app left it."""
    with throwaway_database() as url:
        name = url.rsplit("/", 1)[1]
        create_database(name)
        run_sql(name, seed_statements())
        yield LegacyDb(url, "mysql")


def seed_statements() -> list[str]:
    lines = [line for line in SEED_SQL.read_text("utf-8").splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";\n") if s.strip().rstrip(";").strip()]


@pytest.fixture(params=["mysql", "sqlite"])
def legacy_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LegacyDb]:
    if request.param == "sqlite":
        yield LegacyDb(f"sqlite:///{tmp_path}/chat.sqlite3", "sqlite")
    else:
        with seed_made_database() as db:
            yield db


@pytest.fixture
async def store(legacy_db: LegacyDb) -> AsyncIterator[Store]:
    """The started store; for SQLite that also makes the legacy table, which the rows need."""
    store = open_store(legacy_db.url)
    await store.start()
    yield store
    await store.close()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def user(store: Store, name: str) -> User:
    found = await store.get_user(username=name)
    assert found is not None, name
    return found


async def chat_of(store: Store, label: str) -> int:
    """'general', or 'a+b' for the DM of a pair, which must exist already."""
    if label == "general":
        return store.general_id
    a, b = label.split("+")
    chat, created = await store.get_or_create_dm(await user(store, a), await user(store, b))
    assert not created, f"the migration made the DM {label}"
    return chat.id


async def copied(store: Store, db: LegacyDb) -> dict[int, tuple[int, int, str, str, datetime]]:
    """legacy id -> (message id, chat id, sender, text, time) of every copied row."""
    ledger = dict(db.fetchall("SELECT legacy_id, message_id FROM legacy_migrated"))
    chat_ids = {row[0] for row in db.fetchall("SELECT DISTINCT chat_id FROM mensajes_v2")}
    messages = {m.id: m for chat_id in chat_ids for m in await store.list_messages(chat_id, limit=10_000)}
    out = {}
    for legacy_id, message_id in ledger.items():
        m = messages[message_id]
        assert m.username is not None
        out[legacy_id] = (m.id, m.chat_id, m.username, m.contenido, m.timestamp)
    return out


async def assert_history_in_time_order(store: Store, db: LegacyDb) -> None:
    """Every chat's history lists its copied rows in the legacy time order (ties by legacy id),
    whichever run copied them."""
    by_message = {
        message_id: legacy_id
        for legacy_id, message_id in db.fetchall("SELECT legacy_id, message_id FROM legacy_migrated")
    }
    times = {row[0]: row[3] for row in LEGACY}
    for (chat_id,) in db.fetchall("SELECT DISTINCT chat_id FROM mensajes_v2"):
        shown = [by_message[m.id] for m in await store.list_messages(chat_id) if m.id in by_message]
        assert shown == sorted(shown, key=lambda legacy_id: (times.get(legacy_id, "9999"), legacy_id))


def v2_count(db: LegacyDb) -> int:
    return int(db.fetchall("SELECT COUNT(*) FROM mensajes_v2")[0][0])


async def test_every_row_lands_once_in_its_chat_with_its_time_and_reruns_copy_only_new_rows(
    legacy_db: LegacyDb, store: Store
) -> None:
    await store.ensure_user("Lucía")  # already a v2 user: found, not made again
    legacy_db.insert_legacy(LEGACY)

    report = await migrate_legacy(store)

    assert (report.total, report.copied_before, report.read, report.copied) == (9, 0, 9, 7)
    assert report.skipped == {"invalid usuario": 1, "destinatario is the sender": 1}
    # New: ana, soporte, pedro, beto, each with a DM with admin; and the DM of Lucía and pedro.
    assert (report.users_created, report.dms_created) == (4, 5)
    rows = await copied(store, legacy_db)
    assert set(rows) == set(EXPECTED)
    by_legacy = {r[0]: r for r in LEGACY}
    for legacy_id, (label, sender) in EXPECTED.items():
        _, chat_id, username, text, moment = rows[legacy_id]
        assert (chat_id, username) == (await chat_of(store, label), sender), legacy_id
        assert text == by_legacy[legacy_id][2]
        assert moment == utc(by_legacy[legacy_id][3])
    # v2 ids follow the legacy time order, ties by legacy id.
    # Within a run, v2 ids follow the legacy time order, ties by legacy id; all are below 0.
    in_id_order = sorted(rows, key=lambda legacy_id: rows[legacy_id][0])
    assert in_id_order == sorted(rows, key=lambda legacy_id: (by_legacy[legacy_id][3], legacy_id))
    assert in_id_order[:3] == [3, 1, 5]
    assert max(r[0] for r in rows.values()) < 0
    assert report.per_chat["General"] == 4
    assert sorted(report.per_chat.values()) == [1, 2, 4]
    assert v2_count(legacy_db) == 7
    # Roles: `admin` by name, soporte by tipo_usuario; everyone new has a DM with admin.
    assert (await user(store, "soporte")).role == "admin"
    assert [(await user(store, n)).role for n in ("ana", "pedro", "beto", "Lucía")] == ["user"] * 4
    for name in ("ana", "soporte", "pedro", "beto"):
        await chat_of(store, f"admin+{name}")

    again = await migrate_legacy(store)
    assert (again.copied_before, again.read, again.copied, again.users_created) == (7, 2, 0, 0)
    assert v2_count(legacy_db) == 7

    legacy_db.insert_legacy([(10, "nueva", "llegó después ✨", "2025-03-02 08:00:00", "cliente", None)])
    third = await migrate_legacy(store)
    assert (third.copied_before, third.copied, third.users_created) == (7, 1, 1)
    rows_after = await copied(store, legacy_db)
    assert rows_after[10][1:] == (store.general_id, "nueva", "llegó después ✨", utc("2025-03-02 08:00:00"))
    # A later run takes ids below the earlier ones; history still lists it by its time.
    assert rows_after[10][0] < min(r[0] for r in rows.values())
    await assert_history_in_time_order(store, legacy_db)
    assert {k: v for k, v in rows_after.items() if k != 10} == rows


async def test_the_command_prints_progress_and_a_summary(legacy_db: LegacyDb, store: Store) -> None:
    legacy_db.insert_legacy(LEGACY)
    env = {**os.environ, "DATABASE_URL": legacy_db.url}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chat_server",
        "migrate-legacy",
        "--chunk-rows",
        "3",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[:3] == [
        "3/9 rows read (33%), 3 copied, " + lines[0].rsplit(", ", 1)[1],
        "6/9 rows read (66%), 6 copied, " + lines[1].rsplit(", ", 1)[1],
        "9/9 rows read (100%), 7 copied, " + lines[2].rsplit(", ", 1)[1],
    ]
    assert lines[3] == "legacy rows: 9 (0 copied by earlier runs)"
    assert lines[4].startswith("read 9, copied 7, skipped 2 in ")
    assert "  skipped, destinatario is the sender: 1" in lines
    assert "  skipped, invalid usuario: 1" in lines
    assert "  General: 4" in lines
    assert v2_count(legacy_db) == 7


async def test_a_run_that_fails_half_way_leaves_whole_chunks_and_the_next_run_finishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with seed_made_database() as db:
        store = open_store(db.url)
        await store.start()
        try:
            db.insert_legacy(LEGACY)
            real_write = LegacyMigration._write
            calls: list[int] = []

            async def failing_write(self: LegacyMigration, copies: Any) -> None:
                calls.append(len(copies))
                await real_write(self, copies)
                if len(calls) == 2:
                    raise RuntimeError("the process died here")

            monkeypatch.setattr(LegacyMigration, "_write", failing_write)
            with pytest.raises(RuntimeError):
                await migrate_legacy(store, chunk_rows=2)
            # _write committed chunk 2 before failing: two whole chunks, nothing else.
            assert v2_count(db) == len(db.fetchall("SELECT * FROM legacy_migrated")) == 4
            monkeypatch.undo()

            report = await migrate_legacy(store, chunk_rows=2)
            assert (report.copied_before, report.copied) == (4, 3)
            rows = await copied(store, db)
            assert set(rows) == set(EXPECTED)
            assert v2_count(db) == 7
            await assert_history_in_time_order(store, db)
        finally:
            await store.close()


async def test_rows_without_a_usable_timestamp_are_skipped_not_lost() -> None:
    with seed_made_database() as db:
        store = open_store(db.url)
        await store.start()
        try:
            db.execute(
                "INSERT INTO mensajes (id, usuario, mensaje, timestamp) VALUES (100, 'ana', 'sin hora', NULL)"
            )
            db.insert_legacy([LEGACY[0]])
            report = await migrate_legacy(store)
            assert (report.read, report.copied, report.skipped) == (2, 1, {"no timestamp": 1})
            assert list(await copied(store, db)) == [1]
        finally:
            await store.close()


async def test_the_seed_view_mensajes_recientes_keeps_working() -> None:
    with seed_made_database() as db:
        store = open_store(db.url)
        await store.start()
        try:
            db.insert_legacy(LEGACY)
            await migrate_legacy(store)
        finally:
            await store.close()
        view = db.fetchall("SELECT id, usuario, mensaje, timestamp, hora FROM mensajes_recientes")
        # Newest first, as the seed wrote it.
        assert sorted(r[0] for r in view) == list(range(1, 10))
        assert [r[3] for r in view] == sorted((r[3] for r in view), reverse=True)
        assert view[-1][1:3] == ("Lucía", "¿alguien? ñandú 🇵🇪 中文")
        assert [r[4] for r in view] == [r[3].strftime("%H:%M:%S") for r in view]


def fill_legacy(db: LegacyDb, count: int, *, users: int = 200, seed: int = 4) -> None:
    """Seed-shaped rows: most in General, a fifth in DMs, emoji, times not in id order."""
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    words = ["hola", "gracias", "¿cómo estás?", "ñandú", "Perú 🇵🇪", "😀", "listo", "mañana", "precio"]
    rows = []
    for i in range(count):
        name = "admin" if i % 10 == 0 else f"cliente{rng.randrange(users)}"
        to = None
        if rng.random() < 0.2:
            to = f"cliente{rng.randrange(users)}" if name == "admin" else "admin"
        moment = start + timedelta(seconds=rng.randrange(365 * 24 * 3600))
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(2, 30)))
        tipo = "admin" if name == "admin" else "cliente"
        rows.append((name, text, moment.strftime("%Y-%m-%d %H:%M:%S"), "10.0.0.1", "Mozilla/5.0", tipo, to))
    with db.connect() as conn:
        cur = conn.cursor()
        for at in range(0, count, 5000):
            cur.executemany(
                "INSERT INTO mensajes (usuario, mensaje, timestamp, ip_address, user_agent, tipo_usuario,"
                " destinatario) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                rows[at : at + 5000],
            )
        conn.commit()


@pytest.mark.skipif(not os.environ.get("CHAT_BENCH"), reason="set CHAT_BENCH=1 to time 100,000 rows")
async def test_a_hundred_thousand_rows_in_under_a_minute() -> None:
    count = int(os.environ.get("CHAT_BENCH_ROWS", "100000"))
    with seed_made_database() as db:
        fill_legacy(db, count)
        env = {**os.environ, "DATABASE_URL": db.url}
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chat_server",
            "migrate-legacy",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        seconds = time.monotonic() - started
        print(out.decode())
        print(f"BENCH: {count} legacy rows migrated on MariaDB in {seconds:.1f} s (whole command)")
        assert process.returncode == 0
        assert f"read {count}, copied {count}, skipped 0" in out.decode()
        assert v2_count(db) == count
        assert seconds < 60


def test_report_lines_name_every_count() -> None:
    report = Report(total=5, copied_before=1, read=4, copied=3, users_created=2, dms_created=1, seconds=1.5)
    report.skipped["invalid usuario"] = 1
    report.per_chat.update({"General": 2, "DM admin / ana (chat 3)": 1})
    assert report.lines() == [
        "legacy rows: 5 (1 copied by earlier runs)",
        "read 4, copied 3, skipped 1 in 1.5 s",
        "  skipped, invalid usuario: 1",
        "users created: 2, direct-message chats created: 1",
        "copied per chat:",
        "  General: 2",
        "  DM admin / ana (chat 3): 1",
    ]
