"""The users/chats/messages API, against both stores."""

from __future__ import annotations

import asyncio
import os
import re

import pytest

from .chat_client import ChatClient
from .conftest import every_dialect

LIMA_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d-05:00$")


async def test_login_creates_then_returns_the_user(client: ChatClient) -> None:
    first = await client.login("ana", status=201)
    again = await client.login("ana", status=200)
    assert first["user"] == again["user"]
    user = first["user"]
    assert set(user) == {"id", "username", "role", "estado", "creado_en"}
    assert (user["username"], user["role"], user["estado"]) == ("ana", "user", "N/D")
    assert LIMA_ISO.match(user["creado_en"])
    assert first["token"]


async def test_admin_exists_from_the_start_with_the_admin_role(client: ChatClient) -> None:
    body = await client.login("admin", status=200)
    assert body["user"]["role"] == "admin"


async def test_usernames_are_trimmed_and_case_insensitive(client: ChatClient) -> None:
    created = await client.login("  Ana ", status=201)
    assert created["user"]["username"] == "Ana"
    same = await client.login("ana", status=200)
    assert same["user"]["id"] == created["user"]["id"]
    assert (await client.login("ADMIN", status=200))["user"]["role"] == "admin"


async def test_me_by_header_query_and_token(client: ChatClient) -> None:
    login = await client.login("ana")
    expected = {"user": login["user"]}
    assert await client.call("GET", "/api/me", headers={"X-Username": "ana"}, status=200) == expected
    assert await client.call("GET", "/api/me", params={"username": "ANA"}, status=200) == expected
    auth = {"Authorization": f"Bearer {login['token']}"}
    assert await client.call("GET", "/api/me", headers=auth, status=200) == expected


async def test_me_without_identity_unknown_user_or_forged_token(client: ChatClient) -> None:
    assert "error" in await client.call("GET", "/api/me", status=401)
    body = await client.call("GET", "/api/me", params={"username": "nadie"}, status=404)
    assert body["error"] == "unknown user"
    forged = {"Authorization": "Bearer v1.1.not-a-signature"}
    assert "error" in await client.call("GET", "/api/me", headers=forged, status=401)


async def test_a_user_sees_general_and_their_dm_with_admin(client: ChatClient) -> None:
    await client.login("ana")
    chats = await client.chats("ana")
    assert [c["type"] for c in chats] == ["general", "dm"]
    assert chats[0]["name"] == "General"
    assert sorted(p["username"] for p in chats[1]["participants"]) == ["admin", "ana"]
    assert all(c["last_message"] is None for c in chats)


async def test_the_admin_sees_general_and_a_dm_with_every_user(client: ChatClient) -> None:
    for name in ("ana", "beto", "carla"):
        await client.login(name)
    chats = await client.chats("admin")
    assert chats[0]["type"] == "general"
    others = {p["username"] for c in chats[1:] for p in c["participants"]} - {"admin"}
    assert others == {"ana", "beto", "carla"}
    assert len(chats) == 4


@every_dialect
async def test_chat_list_carries_the_last_message_and_orders_dms_by_activity(client: ChatClient) -> None:
    await client.login("ana")
    await client.login("beto")
    beto_dm = await client.dm_id("beto", "admin")
    await client.post(beto_dm, "hola admin", "beto")
    chats = await client.chats("admin")
    assert chats[1]["id"] == beto_dm
    assert chats[1]["last_message"]["contenido"] == "hola admin"


async def test_dm_creation_is_idempotent(client: ChatClient) -> None:
    await client.login("ana")
    await client.login("beto")
    first = await client.call(
        "POST", "/api/chats/dm", json={"username": "ana", "with_username": "beto"}, status=201
    )
    again = await client.call(
        "POST", "/api/chats/dm", json={"username": "beto", "with_username": "ANA"}, status=200
    )
    assert first["chat"]["id"] == again["chat"]["id"]
    assert first["chat"]["type"] == "dm"
    assert {p["username"] for p in first["chat"]["participants"]} == {"ana", "beto"}


@every_dialect
async def test_twenty_concurrent_dm_creations_give_one_chat(client: ChatClient) -> None:
    await client.login("ana")
    await client.login("beto")

    async def create() -> tuple[int, int]:
        async with client.http.post(
            "/api/chats/dm", json={"username": "ana", "with_username": "beto"}
        ) as resp:
            return resp.status, (await resp.json())["chat"]["id"]

    results = await asyncio.gather(*(create() for _ in range(20)))
    assert len({chat_id for _, chat_id in results}) == 1
    assert sorted(status for status, _ in results) == [200] * 19 + [201]
    ana_dms = [c for c in await client.chats("ana") if c["type"] == "dm"]
    assert len(ana_dms) == 2  # with admin, with beto


async def test_dm_errors(client: ChatClient) -> None:
    await client.login("ana")
    body = await client.call(
        "POST", "/api/chats/dm", json={"username": "ana", "with_username": "nadie"}, status=404
    )
    assert body["error"] == "unknown user"
    await client.call("POST", "/api/chats/dm", json={"username": "ana", "with_username": "ANA"}, status=400)
    await client.call("POST", "/api/chats/dm", json={"username": "ana"}, status=400)
    await client.call("POST", "/api/chats/dm", json={"with_username": "ana"}, status=401)


@every_dialect
async def test_post_and_list_with_emoji_and_lima_time(client: ChatClient) -> None:
    general = client.store.general_id
    text = "¡Hola, Perú! 😀🇵🇪 — ñandú 中文"
    sent = await client.post(general, text, "ana")
    assert set(sent) == {"id", "chat_id", "sender_id", "username", "contenido", "timestamp"}
    assert sent["contenido"] == text
    assert sent["username"] == "ana"
    assert LIMA_ISO.match(sent["timestamp"])
    listed = await client.history(general)
    assert listed == [sent]


async def test_a_user_is_created_by_their_first_message(client: ChatClient) -> None:
    sent = await client.post(client.store.general_id, "primero", "nuevo")
    me = await client.call("GET", "/api/me", params={"username": "nuevo"}, status=200)
    assert me["user"]["id"] == sent["sender_id"]
    assert [c["type"] for c in await client.chats("nuevo")] == ["general", "dm"]


@every_dialect
async def test_history_paging_after_before_and_limit(client: ChatClient) -> None:
    general = client.store.general_id
    ids = [(await client.post(general, f"m{i}"))["id"] for i in range(60)]
    latest = await client.history(general)
    assert [m["id"] for m in latest] == ids[-50:]
    assert [m["id"] for m in await client.history(general, after_id=ids[54])] == ids[55:]
    assert [m["id"] for m in await client.history(general, after_id=0, limit=3)] == ids[:3]
    assert [m["id"] for m in await client.history(general, before_id=ids[10])] == ids[:10]
    assert [m["id"] for m in await client.history(general, before_id=ids[10], limit=4)] == ids[6:10]
    assert await client.history(general, after_id=ids[-1]) == []


async def test_dm_privacy_for_reading_and_posting(client: ChatClient) -> None:
    await client.login("ana")
    await client.login("beto")
    ana_dm = await client.dm_id("ana", "admin")
    params = {"chat_id": ana_dm}
    assert (await client.call("GET", "/api/messages", params=params, status=401))["error"]
    await client.call("GET", "/api/messages", params={**params, "username": "beto"}, status=403)
    await client.call("GET", "/api/messages", params={**params, "username": "ana"}, status=200)
    await client.call("GET", "/api/messages", params={**params, "username": "admin"}, status=200)
    body = {"chat_id": ana_dm, "contenido": "hola", "username": "beto"}
    forbidden = await client.call("POST", "/api/messages", json=body, status=403)
    assert forbidden["error"] == "not a participant of this chat"
    await client.call("POST", "/api/messages", json={"chat_id": ana_dm, "contenido": "x"}, status=401)
    assert await client.history(ana_dm, username="ana") == []


async def test_form_encoded_bodies_are_accepted(client: ChatClient) -> None:
    body = await client.call(
        "POST",
        "/api/messages",
        data={"chat_id": str(client.store.general_id), "contenido": "desde un formulario", "username": "ana"},
        status=201,
    )
    assert body["message"]["contenido"] == "desde un formulario"
    assert (await client.call("POST", "/api/login", data={"username": "beto"}, status=201))["user"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"contenido": "x", "username": "ana"}, 400, "chat_id"),
        ({"chat_id": "abc", "contenido": "x", "username": "ana"}, 400, "chat_id"),
        ({"chat_id": 1.5, "contenido": "x", "username": "ana"}, 400, "chat_id"),
        ({"chat_id": True, "contenido": "x", "username": "ana"}, 400, "chat_id"),
        ({"chat_id": "GENERAL", "username": "ana"}, 400, "contenido"),
        ({"chat_id": "GENERAL", "contenido": "", "username": "ana"}, 400, "contenido"),
        ({"chat_id": "GENERAL", "contenido": "   ", "username": "ana"}, 400, "contenido"),
        ({"chat_id": "GENERAL", "contenido": 5, "username": "ana"}, 400, "contenido"),
        ({"chat_id": "GENERAL", "contenido": "x" * 4001, "username": "ana"}, 400, "contenido"),
        ({"chat_id": "GENERAL", "contenido": "x", "username": ""}, 400, "username"),
        ({"chat_id": "GENERAL", "contenido": "x", "username": "a" * 101}, 400, "username"),
        ({"chat_id": "GENERAL", "contenido": "x", "username": "a\nb"}, 400, "username"),
        ({"chat_id": "GENERAL", "contenido": "x", "username": ["ana"]}, 400, "username"),
        ({"chat_id": 999999, "contenido": "x", "username": "ana"}, 404, None),
    ],
)
async def test_bad_message_posts(
    client: ChatClient, body: dict[str, object], status: int, field: str | None
) -> None:
    if body.get("chat_id") == "GENERAL":
        body = {**body, "chat_id": client.store.general_id}
    answer = await client.call("POST", "/api/messages", json=body, status=status)
    assert isinstance(answer["error"], str)
    assert answer.get("field") == field
    assert await client.history(client.store.general_id) == []


async def test_malformed_json_and_non_object_bodies(client: ChatClient) -> None:
    headers = {"Content-Type": "application/json"}
    for raw in ("{not json", "[1, 2]", '"text"', "\xff"):
        answer = await client.call("POST", "/api/messages", data=raw, headers=headers, status=400)
        assert answer["error"]


@pytest.mark.parametrize(
    "params",
    [
        {"chat_id": "x"},
        {"chat_id": "-1"},
        {"chat_id": "1", "after_id": "-1"},
        {"chat_id": "1", "before_id": "-2147483648"},
        {"chat_id": "1", "limit": "0"},
        {"chat_id": "1", "limit": "201"},
        {"chat_id": "1", "limit": "ten"},
        {"chat_id": "99999999999"},
    ],
)
async def test_bad_numbers_in_queries(client: ChatClient, params: dict[str, str]) -> None:
    answer = await client.call("GET", "/api/messages", params=params, status=400)
    assert answer["error"]


async def test_unknown_chat_routes_methods_and_huge_bodies(client: ChatClient) -> None:
    assert (await client.call("GET", "/api/messages", params={"chat_id": 424242}, status=404))["error"]
    assert (await client.call("GET", "/api/nothing-here", status=404))["error"]
    assert (await client.call("DELETE", "/api/login", status=405))["error"]
    huge = {"chat_id": client.store.general_id, "contenido": "x" * 70_000, "username": "ana"}
    assert (await client.call("POST", "/api/messages", json=huge, status=413))["error"]
    assert await client.history(client.store.general_id) == []


async def test_cors_preflight_for_json_and_identity_headers(client: ChatClient) -> None:
    async with client.http.options(
        "/api/messages",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-username, authorization",
        },
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] in ("*", "http://localhost:5173")
        allowed = resp.headers["Access-Control-Allow-Headers"].lower()
        assert {"content-type", "x-username", "authorization"} <= set(allowed.replace(" ", "").split(","))
        assert "Access-Control-Allow-Credentials" not in resp.headers


async def test_cors_with_listed_origins_allows_credentials_only_for_them(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(cors_origins=("http://app.example",))
    request = {"Access-Control-Request-Method": "GET"}
    async with client.http.options("/api/chats", headers={"Origin": "http://app.example", **request}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    async with client.http.options(
        "/api/chats", headers={"Origin": "http://evil.example", **request}
    ) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_healthz(client: ChatClient) -> None:
    assert await client.call("GET", "/healthz", status=200) == {"status": "ok", "pid": os.getpid()}
