"""Starting on a MariaDB database made by hand from the seed's own SQL, with rows in it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chat_server.app import create_app
from chat_server.migrate_legacy import backfill_key
from chat_server.settings import Settings

from .chat_client import WAIT, AiohttpClient, ChatClient
from .databases import create_database, run_sql, throwaway_database

SEED_SQL = Path(__file__).with_name("seed_schema.sql")


def seed_statements() -> list[str]:
    lines = [line for line in SEED_SQL.read_text("utf-8").splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";\n") if s.strip().rstrip(";").strip()]


SEED_ROWS = [
    "INSERT INTO usuarios (username, role) VALUES ('admin', 'admin'), ('Lucía', 'user'), ('pedro', 'user')",
    # A DM between admin and Lucía, made by the seed's flow (no dm_pairs row yet).
    "INSERT INTO chats (type, name) VALUES ('dm', 'admin-lucia')",
    "INSERT INTO chat_participants (chat_id, user_id) VALUES (1, 1), (1, 2), (1, 3), (2, 1), (2, 2)",
    "INSERT INTO mensajes_v2 (chat_id, sender_id, contenido, timestamp) VALUES "
    "(1, 2, 'hola a todos 👋', '2026-01-02 15:04:05'), (2, 1, 'hola Lucía', '2026-01-02 15:05:00')",
    # The legacy app's row, older than the new flow's, is copied into General at start.
    "INSERT INTO mensajes (usuario, mensaje, tipo_usuario, timestamp) "
    "VALUES ('pedro', 'mensaje antiguo', 'cliente', '2026-01-02 15:04:30')",
]


async def test_server_starts_on_a_seed_made_database_and_loses_nothing(
    aiohttp_client: AiohttpClient,
) -> None:
    with throwaway_database() as url:
        name = url.rsplit("/", 1)[1]
        create_database(name)
        run_sql(name, seed_statements() + SEED_ROWS)

        for start in range(2):  # and a second start on our own database
            client = ChatClient(await aiohttp_client(create_app(Settings(database_url=url))))
            await asyncio.wait_for(client.app[backfill_key].done.wait(), WAIT)
            general = await client.history(1)
            expected = [("Lucía", "hola a todos 👋"), ("pedro", "mensaje antiguo")]
            expected += [("pedro", f"start {n} ✓") for n in range(start)]
            assert [(m["username"], m["contenido"]) for m in general] == expected
            assert general[0]["timestamp"] == "2026-01-02T10:04:05-05:00"
            # The seed's DM is found again, not duplicated.
            dm = await client.call(
                "POST", "/api/chats/dm", json={"username": "lucia", "with_username": "admin"}, status=200
            )
            assert dm["chat"]["id"] == 2
            assert [m["contenido"] for m in await client.history(2, username="admin")] == ["hola Lucía"]
            # pedro had no DM with admin: the server gave him one.
            admin_chats = await client.chats("admin")
            partners = sorted(p["username"] for c in admin_chats[1:] for p in c["participants"])
            assert partners == ["Lucía", "admin", "admin", "pedro"]
            sent = await client.post(1, f"start {start} ✓", "pedro")
            assert sent["username"] == "pedro"
            await client.http.close()

        client = ChatClient(await aiohttp_client(create_app(Settings(database_url=url))))
        assert [m["contenido"] for m in await client.history(1)] == [
            "hola a todos 👋",
            "mensaje antiguo",
            "start 0 ✓",
            "start 1 ✓",
        ]
        await client.http.close()
