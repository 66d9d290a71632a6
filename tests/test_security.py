"""The login cookie, CHAT_AUTH=strict, and the admin password."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import pytest

from chat_server.app import create_app
from chat_server.auth import COOKIE_NAME
from chat_server.settings import Settings

from .chat_client import AiohttpClient, ChatClient
from .openapi_check import ResponseRecorder

MakeClient = Callable[..., Awaitable[ChatClient]]
ADMIN_PASSWORD = "correct horse battery staple"


@pytest.fixture
def make_browser(
    settings: Settings, openapi_responses: ResponseRecorder, aiohttp_client: AiohttpClient
) -> MakeClient:
    """Like `make_client`, but the client keeps cookies, as a browser does."""

    async def make(**overrides: Any) -> ChatClient:
        app = create_app(replace(settings, **overrides))
        openapi_responses.attach(app)
        return ChatClient(await aiohttp_client(app))

    return make


def cookie_of(client: ChatClient) -> str | None:
    cookie = client.http.session.cookie_jar.filter_cookies(client.http.make_url("/")).get(COOKIE_NAME)
    return None if cookie is None else cookie.value


# -- the login cookie ------------------------------------------------------------------------


async def test_login_sets_an_httponly_samesite_lax_cookie_holding_the_token(make_browser: MakeClient) -> None:
    browser = await make_browser()
    async with browser.http.post("/api/login", json={"username": "ana"}) as resp:
        assert resp.status == 201
        token = (await resp.json())["token"]
        header = resp.headers["Set-Cookie"]
    morsel = SimpleCookie(header)[COOKIE_NAME]
    assert morsel.value == token
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["path"] == "/"
    assert int(morsel["max-age"]) > 0
    assert not morsel["secure"]  # plain HTTP here; set over HTTPS


async def test_cookie_login_then_stream_and_post_without_any_username_then_logout(
    make_browser: MakeClient,
) -> None:
    browser = await make_browser()
    ana = (await browser.login("ana", status=201))["user"]
    assert await browser.call("GET", "/api/me", status=200) == {"user": ana}
    general = browser.store.general_id
    stream = await browser.open_stream()  # the per-user stream: identity from the cookie alone
    sent = await browser.call(
        "POST", "/api/messages", json={"chat_id": general, "contenido": "sin nombre"}, status=201
    )
    assert sent["message"]["username"] == "ana"
    assert await stream.messages(1) == [sent["message"]]
    assert [c["type"] for c in (await browser.call("GET", "/api/chats", status=200))["chats"]] == [
        "general",
        "dm",
    ]

    async with browser.http.post("/api/logout") as resp:
        assert resp.status == 200
        assert SimpleCookie(resp.headers["Set-Cookie"])[COOKIE_NAME].value == ""
    assert cookie_of(browser) is None
    assert "error" in await browser.call("GET", "/api/me", status=401)
    await browser.call("GET", "/api/stream", status=401)
    await browser.call("POST", "/api/messages", json={"chat_id": general, "contenido": "x"}, status=401)
    stream.close()


async def test_a_cookie_the_secret_does_not_verify_identifies_no_one(make_browser: MakeClient) -> None:
    browser = await make_browser()
    browser.http.session.cookie_jar.update_cookies({COOKIE_NAME: "v1.1.forged"}, browser.http.make_url("/"))
    body = await browser.call("GET", "/api/me", status=401)
    assert body["error"].startswith("identity required")


async def test_a_username_in_the_request_wins_over_the_cookie(make_browser: MakeClient) -> None:
    browser = await make_browser()
    await browser.login("beto")
    await browser.login("ana")  # the cookie is ana's now
    me = await browser.call("GET", "/api/me", headers={"X-Username": "beto"}, status=200)
    assert me["user"]["username"] == "beto"
    assert (await browser.call("GET", "/api/me", status=200))["user"]["username"] == "ana"


async def test_a_post_carrying_the_cookie_must_come_from_this_or_a_listed_origin(
    make_browser: MakeClient,
) -> None:
    browser = await make_browser(cors_origins=("http://app.example",))
    await browser.login("ana")
    general = browser.store.general_id
    body = {"chat_id": general, "contenido": "hola"}
    own = f"http://{browser.http.make_url('/').raw_authority}"
    for origin, status in [
        ("http://evil.example", 403),
        ("http://app.example", 201),
        (own, 201),
    ]:
        answer = await browser.call(
            "POST", "/api/messages", json=body, headers={"Origin": origin}, status=status
        )
        if status == 403:
            assert answer["origin"] == origin
    # A token in the request is not ambient: no origin check.
    token = (await browser.login("ana"))["token"]
    headers = {"Origin": "http://evil.example", "Authorization": f"Bearer {token}"}
    await browser.call("POST", "/api/messages", json=body, headers=headers, status=201)


async def test_credentialed_cors_only_for_listed_origins(make_browser: MakeClient) -> None:
    browser = await make_browser(cors_origins=("http://app.example",))
    await browser.login("ana")
    async with browser.http.get("/api/me", headers={"Origin": "http://app.example"}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in resp.headers.getall("Vary")
    async with browser.http.get("/api/me", headers={"Origin": "http://evil.example"}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert "Access-Control-Allow-Credentials" not in resp.headers
    open_server = await make_browser()
    async with open_server.http.get("/healthz", headers={"Origin": "http://any.example"}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] in ("*", "http://any.example")
        assert "Access-Control-Allow-Credentials" not in resp.headers


# -- strict mode -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A request that names its caller, and the status it gets once the caller is identified."""

    name: str
    method: str
    path: str
    ok: int
    params: dict[str, Any] | None = None
    json: dict[str, Any] | None = None
    stream: bool = False


def strict_calls(general: int, dm: int) -> list[Call]:
    """Every route that takes a caller, with the caller named by a bare username (ana's)."""
    return [
        Call("me", "GET", "/api/me", 200, params={"username": "ana"}),
        Call("chats", "GET", "/api/chats", 200, params={"username": "ana"}),
        Call("dm", "POST", "/api/chats/dm", 200, json={"username": "ana", "with_username": "admin"}),
        Call("read", "POST", f"/api/chats/{dm}/read", 200, json={"username": "ana", "last_read_id": 0}),
        Call("history", "GET", "/api/messages", 200, params={"chat_id": general, "username": "ana"}),
        Call("legacy history", "GET", "/api/messages", 200, params={"username": "ana"}),
        Call("dm history", "GET", "/api/messages", 200, params={"chat_id": dm, "username": "ana"}),
        Call("legacy dm", "GET", "/api/messages", 200, params={"usuario": "admin", "username": "ana"}),
        Call("legacy dm, no caller", "GET", "/api/messages", 200, params={"usuario": "admin"}),
        Call(
            "post",
            "POST",
            "/api/messages",
            201,
            json={"chat_id": general, "contenido": "x", "username": "ana"},
        ),
        Call("legacy send", "POST", "/api/send", 201, json={"usuario": "ana", "mensaje": "x"}),
        Call("user stream", "GET", "/api/stream", 200, params={"username": "ana"}, stream=True),
        Call("dm stream", "GET", "/api/stream", 200, params={"chat_id": dm, "username": "ana"}, stream=True),
        Call(
            "general stream",
            "GET",
            "/api/stream",
            200,
            params={"chat_id": general, "username": "ana"},
            stream=True,
        ),
    ]


async def _status(client: ChatClient, call: Call, headers: dict[str, str] | None = None) -> int:
    """The status of the call; a stream that started is closed at once."""
    resp = await client.http.request(
        call.method, call.path, params=call.params, json=call.json, headers=headers or {}
    )
    try:
        if not (call.stream and resp.status == 200):
            await resp.read()
        return resp.status
    finally:
        resp.close()


async def test_strict_mode_refuses_bare_usernames_everywhere_and_takes_token_or_cookie(
    make_browser: MakeClient,
) -> None:
    strict = await make_browser(auth_mode="strict")
    login = await strict.login("ana", status=201)
    token = login["token"]
    dm = next(
        c["id"] for c in (await strict.call("GET", "/api/chats", status=200))["chats"] if c["type"] == "dm"
    )
    calls = strict_calls(strict.store.general_id, dm)
    jar = strict.http.session.cookie_jar

    # Without the cookie: a bare username (header or query) is a 401, everywhere.
    jar.clear()
    for call in calls:
        assert await _status(strict, call) == 401, call.name
        if call.params and "username" in call.params:
            header_call = replace(call, params={k: v for k, v in call.params.items() if k != "username"})
            assert await _status(strict, header_call, {"X-Username": "ana"}) == 401, call.name
    assert await strict.store.get_user(username="nadie") is None
    assert await strict.history(strict.store.general_id) == []

    # The token, in the header (or the query for streams), identifies the caller.
    for call in calls:
        assert await _status(strict, call, {"Authorization": f"Bearer {token}"}) == call.ok, call.name
    stream_call = Call("token stream", "GET", "/api/stream", 200, params={"token": token}, stream=True)
    assert await _status(strict, stream_call) == 200

    # And so does the cookie, for a browser that logged in (again: with its session, the name is
    # its own; the same session goes on).
    auth = {"Authorization": f"Bearer {token}"}
    await strict.call("POST", "/api/login", json={"username": "ana"}, headers=auth, status=200)
    assert cookie_of(strict) == token
    for call in calls:
        assert await _status(strict, call) == call.ok, call.name


async def test_strict_legacy_send_takes_the_sender_from_the_token(make_client: MakeClient) -> None:
    strict = await make_client(auth_mode="strict")
    await strict.login("beto")
    token = (await strict.login("ana"))["token"]
    auth = {"Authorization": f"Bearer {token}"}
    sent = await strict.call("POST", "/api/send", json={"mensaje": "hola"}, headers=auth, status=201)
    assert sent["message"]["usuario"] == "ana"
    await strict.call(
        "POST", "/api/send", json={"usuario": "ANA", "mensaje": "hola"}, headers=auth, status=201
    )
    other = await strict.call(
        "POST", "/api/send", json={"usuario": "beto", "mensaje": "hola"}, headers=auth, status=403
    )
    assert other["field"] == "usuario"
    await strict.call("POST", "/api/send", json={"usuario": "ana", "mensaje": "hola"}, status=401)


async def test_strict_mode_still_logs_in_by_username_and_reads_general_anonymously(
    make_client: MakeClient,
) -> None:
    strict = await make_client(auth_mode="strict")
    general = strict.store.general_id
    login = await strict.login("nuevo", status=201)  # a new name: by name alone, no password
    assert login["user"]["username"] == "nuevo"
    auth = {"Authorization": f"Bearer {login['token']}"}
    assert (await strict.call("GET", "/api/me", headers=auth, status=200))["user"] == login["user"]
    first = await strict.call(
        "POST", "/api/messages", json={"chat_id": general, "contenido": "hola"}, headers=auth, status=201
    )
    # Without any identity: General's history and stream, and nothing else.
    reader = await strict.open_stream({"chat_id": general})
    assert await strict.history(general) == [first["message"]]
    second = await strict.call(
        "POST", "/api/messages", json={"chat_id": general, "contenido": "otra"}, headers=auth, status=201
    )
    assert await reader.messages(1) == [second["message"]]
    reader.close()
    await strict.call("GET", "/api/chats", status=401)
    await strict.call("GET", "/api/stream", status=401)
    await strict.call("POST", "/api/messages", json={"chat_id": general, "contenido": "x"}, status=401)


# -- the admin password ----------------------------------------------------------------------


@pytest.mark.parametrize("auth_mode", ["username", "strict"])
async def test_the_admin_password_is_required_to_log_in_as_admin(
    make_browser: MakeClient, auth_mode: str
) -> None:
    client = await make_browser(auth_mode=auth_mode, admin_password=ADMIN_PASSWORD)
    for body in (
        {"username": "admin"},
        {"username": "admin", "password": "wrong"},
        {"username": " ADMIN ", "password": ADMIN_PASSWORD[:-1]},
        {"username": "admin", "password": 12345},
    ):
        answer = await client.call("POST", "/api/login", json=body, status=401)
        assert answer == {"error": "wrong or missing password"}
    assert cookie_of(client) is None
    ok = await client.call(
        "POST", "/api/login", json={"username": "Admin", "password": ADMIN_PASSWORD}, status=200
    )
    assert ok["user"]["role"] == "admin"
    assert cookie_of(client) == ok["token"]
    assert (await client.call("GET", "/api/me", status=200))["user"]["role"] == "admin"
    # Everyone else still logs in by name alone.
    assert (await client.login("ana", status=201))["user"]["role"] == "user"


async def test_with_an_admin_password_a_bare_admin_username_identifies_no_one(
    make_client: MakeClient,
) -> None:
    client = await make_client(admin_password=ADMIN_PASSWORD)
    await client.login("ana")
    general = client.store.general_id
    await client.call("GET", "/api/me", headers={"X-Username": "admin"}, status=401)
    await client.call("GET", "/api/chats", params={"username": "ADMIN"}, status=401)
    await client.call("GET", "/api/stream", params={"username": "admin"}, status=401)
    body = {"chat_id": general, "contenido": "soy admin", "username": "admin"}
    await client.call("POST", "/api/messages", json=body, status=401)
    await client.call("POST", "/api/send", json={"usuario": "admin", "mensaje": "soy admin"}, status=401)
    assert await client.history(general) == []
    # With the password, the token does.
    login = await client.call("POST", "/api/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    auth = {"Authorization": f"Bearer {login['token']}"}
    await client.call(
        "POST", "/api/messages", json={"chat_id": general, "contenido": "hola"}, headers=auth, status=201
    )
    # Others are still who they say they are, in this mode.
    await client.call("GET", "/api/me", headers={"X-Username": "ana"}, status=200)


async def test_the_admin_password_form_body_works_too(make_client: MakeClient) -> None:
    client = await make_client(admin_password=ADMIN_PASSWORD)
    body = aiohttp.FormData({"username": "admin", "password": ADMIN_PASSWORD})
    assert (await client.call("POST", "/api/login", data=body, status=200))["user"]["role"] == "admin"


# -- settings --------------------------------------------------------------------------------


def test_settings_from_the_environment(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "CHAT_SECRET": "s3cret",
        "CHAT_AUTH": "strict",
        "CHAT_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CHAT_RATE_WINDOW": "2.5",
        "CHAT_POST_LIMIT_USER": "7",
        "CHAT_POST_LIMIT_ADDRESS": "0",
        "CHAT_LOGIN_LIMIT_USER": "3",
        "CHAT_LOGIN_LIMIT_ADDRESS": "9",
        "CHAT_MAX_STREAMS_PER_USER": "4",
        "CHAT_MAX_STREAMS_PER_ADDRESS": "5",
        "CHAT_SIGNUP_LIMIT_ADDRESS": "6",
        "CHAT_SESSION_DAYS": "0.5",
        "CHAT_BODY_TIMEOUT": "2.5",
        "CHAT_IDENTITY_SECRET": "host-site-secret",
    }
    settings = Settings.from_env(env)
    assert (settings.auth_mode, settings.admin_password, settings.rate_window) == (
        "strict",
        ADMIN_PASSWORD,
        2.5,
    )
    assert (settings.post_limit_user, settings.post_limit_address) == (7, 0)
    assert (settings.login_limit_user, settings.login_limit_address, settings.max_streams_per_user) == (
        3,
        9,
        4,
    )
    assert (settings.max_streams_per_address, settings.signup_limit_address) == (5, 6)
    assert (settings.session_days, settings.body_timeout) == (0.5, 2.5)
    assert settings.identity_secret == "host-site-secret"
    assert "host-site-secret" not in repr(settings)
    assert ADMIN_PASSWORD not in repr(settings)
    assert "s3cret" not in repr(settings)
    assert not caplog.records
    assert Settings.from_env({}).auth_mode == "username"
    assert "CHAT_SECRET is not set" in caplog.text
    defaults = Settings.from_env({"CHAT_SECRET": "x"})
    assert (defaults.session_days, defaults.body_timeout, defaults.signup_limit_address) == (30, 10, 60)
    assert (defaults.max_streams_per_address, defaults.identity_secret) == (64, None)
    for bad in (
        {"CHAT_AUTH": "open"},
        {"CHAT_RATE_WINDOW": "0"},
        {"CHAT_POST_LIMIT_USER": "many"},
        {"CHAT_SESSION_DAYS": "0"},
        {"CHAT_BODY_TIMEOUT": "-1"},
    ):
        with pytest.raises(SystemExit):
            Settings.from_env({"CHAT_SECRET": "x", **bad})
