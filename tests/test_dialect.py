"""MySQL 8 and MariaDB: what the server sends is valid on both (store/dialect.py).

No MySQL 8 server runs here. The MySQL 8 code path runs on MariaDB instead (`?dialect=mysql8`),
which accepts every MySQL 8 form the store uses; every statement it sends is recorded and held to
the MariaDB-only forms of tests/statements.py. A scan of the source covers statements no test
reaches.
"""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path

import pytest

from chat_server.migrate_legacy import migrate_legacy
from chat_server.store import open_store
from chat_server.store.dialect import detect
from chat_server.store.schema_files import Added, added_object, statements

from .databases import throwaway_database
from .statements import mariadb_only, recording
from .test_migrate_legacy import LEGACY, seed_made_database

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("version", "forced", "name", "returning"),
    [
        ("8.0.36", None, "mysql8", False),
        ("8.4.3-commercial", None, "mysql8", False),
        ("10.11.6-MariaDB-0+deb12u1", None, "mariadb", True),
        ("5.5.5-10.6.12-MariaDB-log", None, "mariadb", True),
        ("10.11.6-MariaDB", "mysql8", "mysql8", False),
    ],
)
def test_the_server_is_told_apart_by_its_version(
    version: str, forced: str | None, name: str, returning: bool
) -> None:
    dialect = detect(version, forced)
    assert (dialect.name, dialect.returning) == (name, returning)


@pytest.mark.parametrize(
    ("version", "forced"),
    [("5.7.44", None), ("10.5.22-MariaDB", None), ("8.0.36", "mariadb"), ("8.0.36", "postgres"), ("x", None)],
)
def test_unsupported_servers_and_dialects_stop_the_start(version: str, forced: str | None) -> None:
    with pytest.raises(SystemExit):
        detect(version, forced)


def test_statements_that_add_an_index_or_a_column_are_recognised() -> None:
    assert added_object("CREATE INDEX idx_a ON t (a, b)") == Added("index", "t", "idx_a")
    assert added_object("create unique index `u` on `t`(a)") == Added("index", "t", "u")
    assert added_object("CREATE INDEX IF NOT EXISTS i ON t (a)") == Added("index", "t", "i")  # SQLite
    assert added_object("ALTER TABLE t ADD COLUMN c DECIMAL(10, 2) DEFAULT 'a,b'") == Added(
        "column", "t", "c"
    )
    assert added_object("ALTER TABLE t ADD FULLTEXT INDEX ft (x, y)") == Added("index", "t", "ft")
    assert added_object("ALTER TABLE t ADD KEY k (x)") == Added("index", "t", "k")
    assert added_object("CREATE TABLE IF NOT EXISTS t (a INT, KEY k (a))") is None
    assert added_object("ALTER TABLE t CONVERT TO CHARACTER SET utf8mb4") is None
    for unclear in ("ALTER TABLE t ADD COLUMN a INT, ADD COLUMN b INT", "ALTER TABLE t ADD c INT"):
        with pytest.raises(ValueError, match="ALTER TABLE"):
            added_object(unclear)


MARIADB_FORMS = [
    "INSERT INTO t (a) VALUES (%s), (%s) RETURNING id",
    "CREATE INDEX IF NOT EXISTS i ON t (a)",
    "CREATE FULLTEXT INDEX IF NOT EXISTS i ON t (a)",
    "ALTER TABLE t ADD COLUMN IF NOT EXISTS c INT",
    "ALTER TABLE t ADD INDEX IF NOT EXISTS i (a)",
    "ALTER TABLE t DROP INDEX IF EXISTS i",
    "SET STATEMENT max_statement_time=1 FOR SELECT 1",
    "CREATE OR REPLACE TABLE t (a INT)",
    "SELECT NEXTVAL(s)",
    "SELECT a FROM t LIMIT ROWS EXAMINED 10",
    "KILL QUERY ID 5",
    "SELECT a FROM t EXCEPT SELECT a FROM u",
    "CREATE TABLE t (a INT) COLLATE=utf8mb4_general_ci",
    "CREATE TABLE t (a INT) DEFAULT CHARSET=latin1",
    "INSERT INTO chats (type) SELECT 'general' WHERE NOT EXISTS (SELECT 1 FROM chats)",
    # Not MariaDB syntax, but names MySQL 8.0 reserved: as valid on MariaDB as they are not on MySQL.
    "CREATE TABLE IF NOT EXISTS t (id INT, rank INT)",
    "ALTER TABLE t ADD COLUMN groups VARCHAR(10)",
    "SELECT COUNT(*) AS rows FROM t",
    "CREATE TABLE window (a INT)",
]
PORTABLE_FORMS = [
    "INSERT INTO chats (type) SELECT 'general' FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM chats WHERE a = 1)",
    "SELECT r.x, (SELECT COUNT(*) FROM m WHERE m.id > r.x) FROM r WHERE r.y = %s",
    "CREATE OR REPLACE VIEW v AS SELECT a FROM t",
    "CREATE TABLE IF NOT EXISTS t (a INT) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    "SELECT /*+ MAX_EXECUTION_TIME(1000) */ a FROM t",
    "SELECT 1",
]


@pytest.mark.parametrize("sql", MARIADB_FORMS)
def test_the_check_finds_each_mariadb_only_form(sql: str) -> None:
    assert mariadb_only(sql) != []


@pytest.mark.parametrize("sql", PORTABLE_FORMS)
def test_the_check_passes_portable_forms(sql: str) -> None:
    assert mariadb_only(sql) == []


async def test_every_statement_of_the_mysql8_path_is_valid_on_mysql8() -> None:
    """Start on an empty database and again on it, then on a seed-made one with legacy rows,
    post concurrently and copy the legacy rows: all on MariaDB in the MySQL 8 dialect."""
    with recording() as sent:
        with throwaway_database() as url:
            for _ in range(2):
                store = open_store(url + "?dialect=mysql8")
                await store.start()
                await store.close()
        empty_start = list(sent)
        sent.clear()
        with seed_made_database() as db:
            db.insert_legacy(LEGACY)
            store = open_store(db.url + "?dialect=mysql8")
            await store.start()
            try:
                assert store.returning is False
                ana, _ = await store.ensure_user("ana")
                posted = await asyncio.gather(
                    *(store.add_message(store.general_id, ana, f"m{i}") for i in range(20))
                )
                report = await migrate_legacy(store)
            finally:
                await store.close()
            stored = db.fetchall(
                "SELECT id, contenido FROM mensajes_v2 WHERE contenido LIKE 'm%%' ORDER BY id"
            )
    # Every post got its own row's id, in the order the posts were made.
    assert [(m.id, m.contenido) for m in posted] == [(int(i), c) for i, c in stored]
    assert [m.contenido for m in posted] == [f"m{i}" for i in range(20)]
    assert report.copied == 7
    # Two starts on an empty database: each index made once, each column added at most once
    # (never one that CREATE TABLE made), every other schema statement run.
    schema = statements("mysql", "schema.sql") + statements("mysql", "migrations.sql")
    added = {sql: added_object(sql) for sql in schema}
    assert {sql for sql, what in added.items() if what is None} <= set(empty_start)
    assert {empty_start.count(sql) for sql, what in added.items() if what and what.kind == "index"} == {1}
    assert {empty_start.count(sql) for sql, what in added.items() if what and what.kind == "column"} <= {0, 1}
    assert not any("ADD COLUMN tipo_usuario" in sql for sql in empty_start)
    # The seed made idx_timestamp by itself: not made again.
    assert not any(sql.startswith("CREATE INDEX idx_timestamp") for sql in sent)
    refused = {sql: problems for sql in empty_start + sent if (problems := mariadb_only(sql))}
    assert refused == {}


_SQL_WORD = re.compile(r"\b(?:SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|SET|WHERE|RETURNING)\b")


_SQL_WORD = re.compile(r"\b(?:SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|SET|WHERE|RETURNING)\b")


def sql_in_source() -> list[tuple[str, str]]:
    """(where, text) of every SQL-looking string constant of the server outside store/dialect.py
    (docstrings left out), and every statement of the MySQL schema files."""
    found = []
    for path in sorted((ROOT / "chat_server").rglob("*.py")):
        if path.name == "dialect.py":
            continue
        tree = ast.parse(path.read_text("utf-8"))
        docstrings = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        }
        found += [
            (f"{path.relative_to(ROOT)}:{node.lineno}", node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and _SQL_WORD.search(node.value)
        ]
    for name in ("schema.sql", "migrations.sql"):
        found += [(f"sql/mysql/{name}", sql) for sql in statements("mysql", name)]
    return found


def test_no_mariadb_only_sql_outside_the_dialect_module() -> None:
    found = sql_in_source()
    assert len(found) > 50  # the scan sees the store's statements
    refused = {where: (text, problems) for where, text in found if (problems := mariadb_only(text))}
    assert refused == {}
