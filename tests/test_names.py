"""Names: one notion of "same name" on every store, and the names a new user may not take.

The same table of look-alike and invisible names is logged in against each store; every store
must give the same answer for each: the same user as a name made before, a new user, or 400."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path

import pytest

from chat_server.names import name_key, skeleton
from chat_server.store.sqlite import SqliteStore

from .chat_client import ChatClient
from .conftest import every_dialect

MakeClient = Callable[..., Awaitable[ChatClient]]
NEW, REFUSED = "new", "refused"

# Made first, in this order; the table's answers name them.
EXISTING = ["ana", "José", "ana maria", "ana😀", "æ", "straße"]

# (what is typed, what it must be: the name of an existing user, NEW or REFUSED)
TABLE: list[tuple[str, str]] = [
    ("admin", "admin"),
    ("ADMIN", "admin"),
    ("  Admin ", "admin"),
    ("\U0001d41admin", "admin"),  # mathematical bold a: NFKC makes it a (MariaDB's collation did not)
    ("\uff41\uff44\uff4d\uff49\uff4e", "admin"),  # full-width
    ("a\u0301dmin", "admin"),  # á, decomposed: accents were never part of a name's identity
    ("ad\u200bmin", REFUSED),  # zero-width space (MariaDB's collation took it for admin)
    ("ad\u00admin", REFUSED),  # soft hyphen
    ("\u202eadmin", REFUSED),  # right-to-left override
    ("admin\u200e", REFUSED),  # left-to-right mark
    ("ad\u2060min", REFUSED),  # word joiner
    ("adm\ufe0fin", REFUSED),  # variation selector
    ("\u0430dmin", REFUSED),  # Cyrillic a
    ("\u0430\u0501m\u0456n", REFUSED),  # Cyrillic a, d and i
    ("\u03b1dmin", REFUSED),  # Greek alpha
    ("adrnin", REFUSED),  # r n looks like m
    ("ADMlN", REFUSED),  # a lower-case L among capitals
    ("ADM1N", REFUSED),
    ("AdmIn", "admin"),
    ("\u0391DMIN", REFUSED),  # Greek capital alpha
    ("\u200b", REFUSED),  # only invisible
    ("\u200b \u200c", REFUSED),
    ("\u3164", REFUSED),  # Hangul filler
    ("\u2800\u2800", REFUSED),  # Braille blank
    ("   ", REFUSED),
    ("luc\ufffd", REFUSED),  # the mark of a wrong decoding
    ("ana\u0007", REFUSED),
    ("ana", "ana"),
    ("ANA", "ana"),
    ("\u00c1na", "ana"),
    ("jose", "José"),
    ("JOSE\u0301", "José"),
    ("ana  maria", "ana maria"),
    ("Ana\u00a0Maria", "ana maria"),
    ("ana😁", NEW),  # MariaDB's utf8mb4_unicode_ci takes every emoji for the same character
    ("ae", REFUSED),  # looks like æ (which MariaDB's collation took for ae)
    ("strasse", "straße"),  # case folding: ß is ss
    ("ad min", NEW),
    ("admin2", NEW),
    ("lucía", NEW),
    ("a\u200bna", REFUSED),
    ("\u0430na", REFUSED),  # looks like ana: a Cyrillic a
    ("j\u043es\u0435", REFUSED),  # looks like José
    ("\u0430na m\u0430ria", REFUSED),
    ("ana mar\u00eda", "ana maria"),
]


async def answers(client: ChatClient) -> list[tuple[str, str]]:
    """Log in each name of the table: what each one turned out to be."""
    ids = {}
    for name in EXISTING:
        ids[(await client.login(name, status=201))["user"]["id"]] = name
    ids[(await client.login("admin", status=200))["user"]["id"]] = "admin"
    got = []
    for typed, _ in TABLE:
        body = await client.call("POST", "/api/login", json={"username": typed})
        if "error" in body:
            got.append((typed, REFUSED))
        else:
            user = body["user"]
            got.append((typed, ids.get(user["id"], NEW)))
            ids.setdefault(user["id"], typed)
    return got


@every_dialect
async def test_the_table_of_names_gives_the_same_answers_on_every_store(client: ChatClient) -> None:
    assert await answers(client) == TABLE


async def test_refused_names_store_nothing_and_say_why(client: ChatClient) -> None:
    await client.login("ana", status=201)
    async with client.store.connection() as db:
        before = await db.fetchall("SELECT id FROM usuarios")
    for typed in ("ad\u200bmin", "\u0430dmin", "\u3164", "\u0430na"):
        body = await client.call("POST", "/api/login", json={"username": typed}, status=400)
        assert body["field"] == "username"
        for route, key in (("/api/messages", "username"), ("/api/send", "usuario")):
            payload = {"chat_id": client.store.general_id, "contenido": "x", "mensaje": "x", key: typed}
            await client.call("POST", route, json=payload, status=400)
    assert "looks like admin" in (await client.login("\u0430dmin"))["error"]
    assert "looks like the name of another user" in (await client.login("\u0430na"))["error"]
    assert "invisible" in (await client.login("ad\u200bmin"))["error"]
    async with client.store.connection() as db:
        assert await db.fetchall("SELECT id FROM usuarios") == before


async def test_names_are_stored_in_nfc(client: ChatClient) -> None:
    user = (await client.login("Jose\u0301"))["user"]
    assert user["username"] == "Jos\u00e9"


async def test_existing_users_keep_names_the_rules_now_refuse(make_client: MakeClient) -> None:
    """Rows made before the rules (by an older version, or by hand, with no key yet) are keyed
    at start-up; their users log in with their names as they are."""
    client = await make_client()
    async with client.store.connection() as db:
        for name in ("beto\u200b", "\u0430dmin", "\U0001d41admin", "Carla"):
            await db.execute(
                "INSERT INTO usuarios (username, role, creado_en) VALUES (%s, 'user', '2026-01-01 00:00:00')",
                (name,),
            )
    await client.http.close()
    client = await make_client()  # a start keys them
    beto = (await client.login("beto\u200b", status=200))["user"]
    assert beto["username"] == "beto\u200b"
    assert (await client.login("\u0430dmin", status=200))["user"]["username"] == "\u0430dmin"
    assert (await client.login("carla", status=200))["user"]["username"] == "Carla"
    # Two old names with one key: the older user (admin) keeps it.
    assert (await client.login("\U0001d41admin", status=200))["user"]["role"] == "admin"
    # The new rules still hold for names no one has.
    await client.call("POST", "/api/login", json={"username": "beto\u200c"}, status=400)


@pytest.mark.parametrize(
    ("a", "b"),
    [("admin", "\u0430dmin"), ("admin", "adrnin"), ("ADMIN", "ADMlN"), ("paypal", "\u0440\u0430ypal")],
)
def test_look_alikes_share_a_skeleton(a: str, b: str) -> None:
    assert skeleton(a) == skeleton(b)
    assert skeleton(a) != skeleton("ana")


def test_a_long_key_is_a_digest_that_fits_the_column() -> None:
    key = name_key("\ufdfa" * 100)  # NFKC makes each of these 18 characters
    assert key.startswith("#")
    assert len(key) == 65
    assert name_key("\ufdfa" * 100) != name_key("\ufdfa" * 99)


async def test_an_sqlite_file_of_the_previous_version_opens_and_keeps_its_users(tmp_path: Path) -> None:
    """Its unique index on unikey(username), a function this version no longer registers, is
    dropped before anything writes to usuarios; its users are keyed and log in as before."""
    path = tmp_path / "old.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        db.create_function("unikey", 1, lambda name: name.casefold(), deterministic=True)
        db.execute(
            "CREATE TABLE usuarios (id INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT NOT NULL, "
            "role TEXT NOT NULL DEFAULT 'user', estado TEXT DEFAULT 'N/D', "
            "creado_en TEXT DEFAULT CURRENT_TIMESTAMP)"
        )
        db.execute("CREATE UNIQUE INDEX uniq_username ON usuarios (unikey(username))")
        db.execute("INSERT INTO usuarios (username, role) VALUES ('admin', 'admin'), ('Ana', 'user')")
        db.commit()
    store = SqliteStore(f"sqlite:///{path}")
    await store.start()
    try:
        ana = await store.get_user(username="ANA")
        assert ana is not None
        assert (ana.id, ana.username) == (2, "Ana")
        beto, created = await store.ensure_user("beto")
        assert created
        assert beto.id == 3
    finally:
        await store.close()
