"""The seed's legacy routes (chat_server/legacy.py) on both stores, and that no other code knows
the legacy names."""

from __future__ import annotations

import io
import re
import tokenize
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from .chat_client import ChatClient

V2_FIELDS = {"id", "chat_id", "sender_id", "username", "contenido", "timestamp"}
HORA = re.compile(r"^\d\d:\d\d:\d\d$")


def v2(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k in V2_FIELDS}


def assert_legacy_shape(message: dict[str, Any]) -> None:
    """The v2 fields plus usuario, mensaje and hora (HH:MM:SS of the Lima timestamp)."""
    assert set(message) == V2_FIELDS | {"usuario", "mensaje", "hora"}
    assert message["usuario"] == message["username"]
    assert message["mensaje"] == message["contenido"]
    assert HORA.match(message["hora"])
    assert message["timestamp"].endswith("-05:00")
    assert message["hora"] == message["timestamp"][11:19]


async def send(client: ChatClient, status: int = 201, **fields: str) -> dict[str, Any]:
    body: dict[str, Any] = await client.call("POST", "/api/send", json=fields, status=status)
    return body


async def legacy_get(client: ChatClient, status: int = 200, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = await client.call("GET", "/api/messages", params=params, status=status)
    return body


async def test_get_without_chat_id_is_general_with_the_legacy_fields(client: ChatClient) -> None:
    general = client.store.general_id
    new_flow = await client.post(general, "hola 😀🇵🇪", "ana")
    legacy = (await send(client, usuario="beto", mensaje="¡qué tal, ñandú!"))["message"]
    body = await legacy_get(client)
    assert set(body) == {"chat_id", "messages"}
    assert body["chat_id"] == general
    assert [v2(m) for m in body["messages"]] == [new_flow, v2(legacy)] == await client.history(general)
    for message in body["messages"]:
        assert_legacy_shape(message)
    assert [(m["usuario"], m["mensaje"]) for m in body["messages"]] == [
        ("ana", "hola 😀🇵🇪"),
        ("beto", "¡qué tal, ñandú!"),
    ]
    # hora is Lima time: UTC minus five hours, whatever the server's own zone.
    stored = await client.store.list_messages(general)
    assert [m["hora"] for m in body["messages"]] == [
        (m.timestamp - timedelta(hours=5)).strftime("%H:%M:%S") for m in stored
    ]


async def test_after_id_and_limit_on_the_legacy_get(client: ChatClient) -> None:
    ids = [(await send(client, usuario="ana", mensaje=f"m{i}"))["message"]["id"] for i in range(6)]
    page = await legacy_get(client, after_id=ids[1], limit=2)
    assert [m["id"] for m in page["messages"]] == ids[2:4]
    assert [m["id"] for m in (await legacy_get(client, limit=2))["messages"]] == ids[-2:]
    assert (await legacy_get(client, after_id=ids[-1]))["messages"] == []
    await legacy_get(client, status=400, limit="0")


async def test_get_with_usuario_is_the_dm_of_caller_and_name_made_on_first_ask(client: ChatClient) -> None:
    await client.login("ana")
    await client.login("beto")
    assert {p["username"] for c in await client.chats("ana") for p in c["participants"]} == {"ana", "admin"}

    by_header = await client.call(
        "GET", "/api/messages", params={"usuario": "beto"}, headers={"X-Username": "ana"}, status=200
    )
    assert by_header["messages"] == []
    dm_id = by_header["chat_id"]
    dm = next(c for c in await client.chats("ana") if c["id"] == dm_id)
    assert dm["type"] == "dm"
    assert {p["username"] for p in dm["participants"]} == {"ana", "beto"}

    sent = (await send(client, usuario="beto", mensaje="hola ana 👋", destinatario="ana"))["message"]
    assert sent["chat_id"] == dm_id
    by_query = await legacy_get(client, usuario="beto", username="ana")
    from_other_side = await legacy_get(client, usuario="ANA", username="Beto")
    assert by_query == from_other_side == {"chat_id": dm_id, "messages": [sent]}
    assert_legacy_shape(sent)
    assert await client.history(dm_id, username="beto") == [v2(sent)]
    later = (await send(client, usuario="ana", mensaje="hola beto", destinatario="beto"))["message"]
    assert (await legacy_get(client, usuario="beto", username="ana", after_id=sent["id"]))["messages"] == [
        later
    ]


async def test_get_with_usuario_needs_a_known_caller_and_a_known_name(client: ChatClient) -> None:
    await client.login("ana")
    no_caller = await legacy_get(client, status=400, usuario="ana")
    assert "username" in no_caller["error"]
    unknown = await legacy_get(client, status=404, usuario="nadie", username="ana")
    assert (unknown["error"], unknown["username"]) == ("unknown user", "nadie")
    assert (await legacy_get(client, status=404, usuario="ana", username="nadie"))["error"] == "unknown user"
    await legacy_get(client, status=400, usuario="ANA", username="ana")  # a DM with oneself
    assert (await legacy_get(client, status=400, usuario=" ", username="ana"))["field"] == "usuario"


async def test_send_creates_the_user_on_first_use_and_posts_in_general(client: ChatClient) -> None:
    body = await send(client, usuario="nuevo", mensaje="primer mensaje 😀")
    assert set(body) == {"message"}
    message = body["message"]
    assert_legacy_shape(message)
    assert (message["chat_id"], message["usuario"], message["mensaje"]) == (
        client.store.general_id,
        "nuevo",
        "primer mensaje 😀",
    )
    me = await client.call("GET", "/api/me", params={"username": "nuevo"}, status=200)
    assert me["user"]["id"] == message["sender_id"]
    assert [c["type"] for c in await client.chats("nuevo")] == ["general", "dm"]  # the DM with admin
    again = (await send(client, usuario="NUEVO", mensaje="otra vez"))["message"]
    assert again["sender_id"] == message["sender_id"]
    assert await client.history(client.store.general_id) == [v2(message), v2(again)]


async def test_send_form_encoded_to_general_and_to_a_dm(client: ChatClient) -> None:
    general = await client.call(
        "POST", "/api/send", data={"usuario": "ana", "mensaje": "desde un formulario ñ"}, status=201
    )
    assert_legacy_shape(general["message"])
    assert general["message"]["chat_id"] == client.store.general_id
    private = await client.call(
        "POST",
        "/api/send",
        data={"usuario": "admin", "mensaje": "privado", "destinatario": "ana"},
        status=201,
    )
    assert private["message"]["chat_id"] == await client.dm_id("ana", "admin")
    missing = await client.call("POST", "/api/send", data={"usuario": "ana"}, status=400)
    assert missing["field"] == "mensaje"


async def test_send_with_destinatario_goes_to_the_dm_of_the_pair(client: ChatClient) -> None:
    await client.login("ana")
    await client.login("beto")
    to_admin = (await send(client, usuario="ana", mensaje="ayuda", destinatario="admin"))["message"]
    reply = (await send(client, usuario="admin", mensaje="dime", destinatario="Ana"))["message"]
    assert to_admin["chat_id"] == reply["chat_id"] == await client.dm_id("ana", "admin")
    between_users = (await send(client, usuario="beto", mensaje="hola", destinatario="ana"))["message"]
    assert between_users["chat_id"] == await client.dm_id("ana", "beto")
    assert await client.history(client.store.general_id) == []
    assert await client.history(to_admin["chat_id"], username="ana") == [v2(to_admin), v2(reply)]


async def test_a_refused_send_stores_nothing_and_creates_no_user(client: ChatClient) -> None:
    unknown = await send(client, 404, usuario="fantasma", mensaje="hola", destinatario="nadie")
    assert (unknown["error"], unknown["field"]) == ("unknown user", "destinatario")
    await client.call("GET", "/api/me", params={"username": "fantasma"}, status=404)
    await client.login("ana")
    assert (await send(client, 400, usuario="ana", mensaje="a mí", destinatario="ANA"))["error"]
    assert await client.history(client.store.general_id) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mensaje": "hola"}, "usuario"),
        ({"usuario": "", "mensaje": "hola"}, "usuario"),
        ({"usuario": "   ", "mensaje": "hola"}, "usuario"),
        ({"usuario": 7, "mensaje": "hola"}, "usuario"),
        ({"usuario": "a" * 101, "mensaje": "hola"}, "usuario"),
        ({"usuario": "ana"}, "mensaje"),
        ({"usuario": "ana", "mensaje": ""}, "mensaje"),
        ({"usuario": "ana", "mensaje": " \n "}, "mensaje"),
        ({"usuario": "ana", "mensaje": ["hola"]}, "mensaje"),
        ({"usuario": "ana", "mensaje": "x" * 4001}, "mensaje"),
        ({"usuario": "ana", "mensaje": "hola", "destinatario": ""}, "destinatario"),
        ({}, "usuario"),
    ],
)
async def test_send_with_missing_or_empty_fields_is_a_400(
    client: ChatClient, body: dict[str, Any], field: str
) -> None:
    answer = await client.call("POST", "/api/send", json=body, status=400)
    assert isinstance(answer["error"], str)
    assert answer["field"] == field
    assert await client.history(client.store.general_id) == []


async def test_send_with_a_malformed_body_is_a_400(client: ChatClient) -> None:
    headers = {"Content-Type": "application/json"}
    for raw in ("{not json", "[1]", ""):
        assert (await client.call("POST", "/api/send", data=raw, headers=headers, status=400))["error"]


async def test_legacy_posts_reach_open_streams(client: ChatClient) -> None:
    await client.login("ana")
    general_stream = await client.open_stream({"chat_id": client.store.general_id})
    ana_stream = await client.open_stream({"username": "ana"})
    public = (await send(client, usuario="beto", mensaje="para todos 📣"))["message"]
    private = (await send(client, usuario="admin", mensaje="solo ana", destinatario="ana"))["message"]
    assert await general_stream.messages(1) == [v2(public)]
    assert await ana_stream.messages(2) == [v2(public), v2(private)]


# -- the legacy names stay in the compatibility module ---------------------------------------

ROOT = Path(__file__).resolve().parent.parent
LEGACY_NAMES = re.compile(r"(?<![a-z])(usuario|mensaje|destinatario|hora)(?![a-z])", re.IGNORECASE)
# The modules allowed to know them: the compatibility routes and the one-off copy of the table.
COMPATIBILITY = {ROOT / "chat_server" / "legacy.py", ROOT / "chat_server" / "migrate_legacy.py"}
# In sql/*/schema.sql, the seed's own legacy table, its view and its indexes (and the seed's
# ALTERs that add the table's late columns) may name them.
LEGACY_SCHEMA = re.compile(
    r"^(CREATE TABLE IF NOT EXISTS mensajes\b"
    r"|CREATE OR REPLACE VIEW mensajes_recientes\b"
    r"|CREATE INDEX (IF NOT EXISTS )?\w+ ON mensajes\s*\("
    r"|ALTER TABLE mensajes\b)",
    re.IGNORECASE,
)


def python_hits(path: Path) -> list[str]:
    """Names and strings (SQL, JSON keys, docstrings) that name a legacy field; not comments."""
    hits = []
    for token in tokenize.generate_tokens(io.StringIO(path.read_text("utf-8")).readline):
        if token.type in (tokenize.NAME, tokenize.STRING) and LEGACY_NAMES.search(token.string):
            hits.append(f"{path.relative_to(ROOT)}:{token.start[0]}: {token.string[:60]}")
    return hits


def sql_hits(path: Path) -> tuple[list[str], int]:
    """Statements that name a legacy field, outside the allowed ones; and how many were allowed."""
    hits, allowed = [], 0
    for statement in path.read_text("utf-8").split(";\n"):
        code = "\n".join(line for line in statement.splitlines() if not line.lstrip().startswith("--"))
        if not LEGACY_NAMES.search(code):
            continue
        if path.name == "schema.sql" and LEGACY_SCHEMA.match(code.strip()):
            allowed += 1
        else:
            hits.append(f"{path.relative_to(ROOT)}: {code.strip()[:80]}")
    return hits, allowed


def test_no_code_outside_the_compatibility_module_handles_a_legacy_field_name() -> None:
    hits: list[str] = []
    allowed = 0
    for path in sorted((ROOT / "chat_server").rglob("*")) + sorted((ROOT / "sql").rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path in COMPATIBILITY:
            continue
        if path.suffix == ".py":
            hits += python_hits(path)
        elif path.suffix == ".sql":
            found, ok = sql_hits(path)
            hits += found
            allowed += ok
        elif LEGACY_NAMES.search(path.read_text("utf-8", errors="replace")):
            hits.append(str(path.relative_to(ROOT)))
    assert hits == []
    # The scan sees what it must: the seed's table, view and indexes, and the compatibility code.
    assert allowed >= 5
    assert python_hits(ROOT / "chat_server" / "legacy.py")
