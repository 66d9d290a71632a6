"""CHAT_AUTH=strict protects every conversation without passwords: a name belongs to the first
client that takes it; another client needs a one-time login link from the admin or an identity
verified by the host site. Failed logins never lock out the right password from elsewhere."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from chat_server.proxies import parse_networks
from chat_server.sessions import LINK_SECONDS, sessions_key

from .chat_client import ChatClient
from .test_sessions import bearer, status, token_works

MakeClient = Callable[..., Awaitable[ChatClient]]
ADMIN_PASSWORD = "correct horse battery staple"
IDENTITY_SECRET = "shared-with-the-host-site"


def user_hash(username: str, secret: str = IDENTITY_SECRET) -> str:
    return hmac.new(secret.encode(), username.encode(), hashlib.sha256).hexdigest()


async def strict_client(make_client: MakeClient, **overrides: Any) -> ChatClient:
    return await make_client(auth_mode="strict", admin_password=ADMIN_PASSWORD, **overrides)


async def admin_token(client: ChatClient, headers: dict[str, str] | None = None) -> str:
    body = {"username": "admin", "password": ADMIN_PASSWORD}
    token: str = (await client.call("POST", "/api/login", json=body, headers=headers or {}, status=200))[
        "token"
    ]
    return token


async def test_a_name_belongs_to_the_first_client_that_takes_it(make_client: MakeClient) -> None:
    strict = await strict_client(make_client)
    ana = await strict.login("ana", status=201)
    taken = await strict.login("ana", status=409)  # another client: no session of ana
    assert taken["error"].startswith("this name is taken")
    assert taken["username"] == "ana"
    await strict.login("ANA", status=409)  # the same name, however written
    # The first client, with its session, logs in again as often as it likes.
    again = await strict.call("POST", "/api/login", json={"username": "ana"}, headers=bearer(ana["token"]))
    assert again["token"] == ana["token"]
    # A name nobody ever logged in with is free: here, one the seed's SQL or username mode made.
    await strict.store.ensure_user("carla")
    await strict.login("carla", status=200)
    await strict.login("carla", status=409)
    # After logout the name stays taken: only a login link brings it back.
    await strict.call("POST", "/api/logout", headers=bearer(ana["token"]), status=200)
    await strict.call(
        "POST", "/api/login", json={"username": "ana"}, headers=bearer(ana["token"]), status=409
    )


async def test_username_mode_keeps_the_seeds_behaviour(make_client: MakeClient) -> None:
    open_mode = await make_client()
    await open_mode.login("ana", status=201)
    await open_mode.login("ana", status=200)  # anyone who types the name is that user there
    assert await open_mode.call("GET", "/api/me", headers={"X-Username": "ana"}, status=200)


async def test_a_login_link_works_once_for_fifteen_minutes(make_client: MakeClient) -> None:
    strict = await strict_client(make_client)
    ana = await strict.login("ana", status=201)
    ana_id = ana["user"]["id"]
    admin = bearer(await admin_token(strict))
    path = f"/api/users/{ana_id}/login-link"
    # Only the admin makes links.
    await strict.call("POST", path, headers=bearer(ana["token"]), status=403)
    await strict.call("POST", path, status=401)
    await strict.call("POST", "/api/users/999999/login-link", headers=admin, status=404)
    admin_id = (await strict.call("GET", "/api/me", headers=admin))["user"]["id"]
    await strict.call("POST", f"/api/users/{admin_id}/login-link", headers=admin, status=400)

    link = await strict.call("POST", path, headers=admin, status=201)
    assert link["user"]["username"] == "ana"
    assert link["url"].endswith(f"/?login_code={link['code']}")
    new_device = await strict.call("POST", "/api/login", json={"login_code": link["code"]}, status=200)
    assert new_device["user"]["id"] == ana_id
    assert await token_works(strict, new_device["token"])
    assert await token_works(strict, ana["token"])  # the old device keeps its session
    # Used: refused the second time, with or without the name.
    for body in ({"login_code": link["code"]}, {"login_code": link["code"], "username": "ana"}):
        refused = await strict.call("POST", "/api/login", json=body, status=401)
        assert "login link" in refused["error"]
    await strict.call("POST", "/api/login", json={"login_code": "made-up"}, status=401)
    await strict.call("POST", "/api/login", json={"login_code": 12}, status=400)
    # A link names its user: another name with it is refused, and the link is not spent by that.
    second = await strict.call("POST", path, headers=admin, status=201)
    await strict.login("beto", status=201)
    for name in ("beto", "nadie"):
        body = {"login_code": second["code"], "username": name}
        await strict.call("POST", "/api/login", json=body, status=401)
    body = {"login_code": second["code"], "username": "ANA"}
    assert (await strict.call("POST", "/api/login", json=body, status=200))["user"]["id"] == ana_id
    # Expired after fifteen minutes.
    third = await strict.call("POST", path, headers=admin, status=201)
    strict.app[sessions_key].clock = lambda: time.time() + LINK_SECONDS + 1
    await strict.call("POST", "/api/login", json={"login_code": third["code"]}, status=401)


async def test_a_verified_identity_logs_in_even_with_a_taken_name(make_client: MakeClient) -> None:
    strict = await strict_client(make_client, identity_secret=IDENTITY_SECRET)
    await strict.login("ana", status=201)
    body = {"username": "ana", "user_hash": user_hash("ana")}
    verified = await strict.call("POST", "/api/login", json=body, status=200)
    assert verified["user"]["username"] == "ana"
    assert await token_works(strict, verified["token"])
    upper = {"username": "ana", "user_hash": user_hash("ana").upper()}
    await strict.call("POST", "/api/login", json=upper, status=200)
    # A new name with a verified identity is created as usual.
    await strict.call(
        "POST", "/api/login", json={"username": "zoe", "user_hash": user_hash("zoe")}, status=201
    )
    for wrong in (user_hash("beto"), user_hash("ana", "another secret"), "", "ñ" * 64):
        await strict.call("POST", "/api/login", json={"username": "ana", "user_hash": wrong}, status=401)
    await strict.call("POST", "/api/login", json={"username": "ana", "user_hash": 5}, status=400)
    # The admin still needs the password.
    admin = {"username": "admin", "user_hash": user_hash("admin")}
    await strict.call("POST", "/api/login", json=admin, status=401)
    # Without CHAT_IDENTITY_SECRET, a user_hash is refused as such.
    plain = await strict_client(make_client)
    refused = await plain.call("POST", "/api/login", json=body, status=400)
    assert refused["field"] == "user_hash"


async def test_dms_of_others_stay_unreadable_through_every_route(make_client: MakeClient) -> None:
    strict = await strict_client(make_client, identity_secret=IDENTITY_SECRET)
    ana = await strict.login("ana", status=201)
    beto = await strict.login("beto", status=201)
    admin = bearer(await admin_token(strict))
    ana_auth, beto_auth = bearer(ana["token"]), bearer(beto["token"])
    chats = (await strict.call("GET", "/api/chats", headers=ana_auth, status=200))["chats"]
    dm = next(c["id"] for c in chats if c["type"] == "dm")
    secret = await strict.call(
        "POST", "/api/messages", json={"chat_id": dm, "contenido": "solo para admin"}, headers=ana_auth
    )
    beto_stream = await strict.open_stream({"token": beto["token"]})
    anonymous = await strict.open_stream({"chat_id": strict.store.general_id})

    refused = [
        ("GET", "/api/messages", {"params": {"chat_id": dm}}),
        ("GET", "/api/messages", {"params": {"chat_id": dm, "after_id": 0}}),  # polling
        ("GET", "/api/messages", {"params": {"chat_id": dm, "before_id": secret["message"]["id"] + 1}}),
        ("GET", "/api/stream", {"params": {"chat_id": dm}}),
        ("GET", "/api/stream", {"params": {"chat_id": dm, "last_event_id": 0}}),
        ("POST", f"/api/chats/{dm}/read", {"json": {"last_read_id": 0}}),
        ("POST", "/api/messages", {"json": {"chat_id": dm, "contenido": "x"}}),
        ("GET", "/api/search", {"params": {"q": "solo admin", "chat_id": dm}}),
    ]
    for method, path, kwargs in refused:
        # As beto (a participant of other chats), anonymously, and by ana's bare name.
        assert await status(strict, method, path, headers=beto_auth, **kwargs) == 403, (path, kwargs)
        assert await status(strict, method, path, **kwargs) == 401, (path, kwargs)
        assert await status(strict, method, path, headers={"X-Username": "ana"}, **kwargs) == 401
    # The legacy routes: beto's "DM with admin" is his own, and General holds no DM message.
    legacy = await strict.call(
        "GET", "/api/messages", params={"usuario": "admin"}, headers=beto_auth, status=200
    )
    assert legacy["chat_id"] != dm
    assert legacy["messages"] == []
    general = await strict.call("GET", "/api/messages", status=200)
    assert all(m["contenido"] != "solo para admin" for m in general["messages"])
    await strict.call("GET", "/api/messages", params={"usuario": "admin", "username": "ana"}, status=401)
    # Searching everything finds it for its participants only.
    for auth, found in ((beto_auth, []), (admin, ["solo para admin"])):
        hits = await strict.call("GET", "/api/search", params={"q": "solo admin"}, headers=auth, status=200)
        assert [m["contenido"] for m in hits["messages"]] == found
    await strict.call("GET", "/api/search", params={"q": "solo admin", "username": "ana"}, status=401)
    # beto's chat list does not have it; his stream and General's did not get it.
    beto_chats = (await strict.call("GET", "/api/chats", headers=beto_auth, status=200))["chats"]
    assert dm not in {c["id"] for c in beto_chats}
    marker = await strict.call(
        "POST", "/api/messages", json={"chat_id": strict.store.general_id, "contenido": "fin"}, headers=admin
    )
    assert await beto_stream.messages(1) == [marker["message"]]
    assert await anonymous.messages(1) == [marker["message"]]
    # The participants do read it.
    history = await strict.call("GET", "/api/messages", params={"chat_id": dm}, headers=admin, status=200)
    assert [m["contenido"] for m in history["messages"]] == ["solo para admin"]
    beto_stream.close()
    anonymous.close()


async def test_the_admin_logs_in_after_any_number_of_wrong_attempts_by_others(
    make_client: MakeClient,
) -> None:
    # Through a trusted proxy (loopback), each forwarded address is another client.
    strict = await strict_client(
        make_client, trusted_proxies=parse_networks("127.0.0.1/32"), login_limit_user=3, rate_window=3600.0
    )
    wrong = {"username": "admin", "password": "guess"}
    attacker = {"X-Forwarded-For": "203.0.113.66"}
    statuses = [
        (await strict.call("POST", "/api/login", json=wrong, headers=attacker))["error"] for _ in range(8)
    ]
    assert statuses[:3] == ["wrong or missing password"] * 3
    assert all(s.startswith("too many failed logins") for s in statuses[3:])
    # Many others, each a few wrong guesses: more than the limit in all.
    for n in range(12):
        others = {"X-Forwarded-For": f"198.51.100.{n}"}
        for _ in range(2):
            await strict.call("POST", "/api/login", json=wrong, headers=others, status=401)
    # The right password, from the admin's own address, is never stopped.
    assert await admin_token(strict, {"X-Forwarded-For": "192.0.2.10"})
    # Nor from an address whose earlier mistakes stay under the limit.
    assert await admin_token(strict, {"X-Forwarded-For": "198.51.100.0"})
    # Taken names count as failures too, per address.
    await strict.login("ana", status=201)
    thief = {"X-Forwarded-For": "203.0.113.77"}
    codes = [
        await status(strict, "POST", "/api/login", json={"username": "ana"}, headers=thief) for _ in range(5)
    ]
    assert codes == [409, 409, 409, 429, 429]


@pytest.mark.parametrize("cap", [2])
async def test_anonymous_streams_are_capped_per_address(make_client: MakeClient, cap: int) -> None:
    client = await make_client(max_streams_per_address=cap, trusted_proxies=parse_networks("127.0.0.1/32"))
    general = client.store.general_id
    here = {"X-Forwarded-For": "198.51.100.1"}
    streams = [await client.open_stream({"chat_id": general}, headers=here) for _ in range(cap)]
    refused = await client.call("GET", "/api/stream", params={"chat_id": general}, headers=here, status=429)
    assert refused["limit"] == cap
    # Another address, and a logged-in user at this one, are not held back.
    elsewhere = await client.open_stream({"chat_id": general}, headers={"X-Forwarded-For": "198.51.100.2"})
    token = (await client.login("ana"))["token"]
    mine = await client.open_stream({"chat_id": general, "token": token}, headers=here)
    for stream in [*streams, elsewhere, mine]:
        stream.close()


async def test_a_login_link_never_replaces_the_admin_password(make_client: MakeClient) -> None:
    before = await make_client(auth_mode="strict")  # no password yet: the admin may make one
    admin = await before.login("admin", status=200)
    auth = bearer(admin["token"])
    link = await before.call("POST", f"/api/users/{admin['user']['id']}/login-link", headers=auth, status=201)
    after = await strict_client(make_client)  # the same database, now with CHAT_ADMIN_PASSWORD
    refused = await after.call("POST", "/api/login", json={"login_code": link["code"]}, status=401)
    assert refused["error"] == "the admin logs in with the password"
