"""Behind a reverse proxy: the client's address and scheme come from trusted peers only; the
cookie's origin check compares scheme, host and port; /metrics can require a token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from chat_server.auth import COOKIE_NAME
from chat_server.proxies import Client, TrustedProxies, parse_networks
from chat_server.settings import Settings

from .chat_client import ChatClient

MakeClient = Callable[..., Awaitable[ChatClient]]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The embedded store only: what is under test here (addresses, schemes, headers) never
    reaches the store, so the MariaDB half would repeat the same thing."""
    return f"sqlite:///{tmp_path}/chat.sqlite3"


LOOPBACK = parse_networks("127.0.0.1/32, ::1")
PROXIES = TrustedProxies(parse_networks("10.0.0.0/8, 2001:db8:ffff::/48"))


def _client_of(peer: str, headers: dict[str, str]) -> Client | None:
    transport_info = {"peername": (peer, 40000)}

    class Transport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return transport_info.get(name, default)

    request = make_mocked_request("GET", "/", headers=headers, transport=Transport())
    return PROXIES.client(request)


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # From a trusted proxy: the rightmost address that is not a proxy is the client.
        ("10.0.0.2", {"X-Forwarded-For": "198.51.100.7"}, Client("198.51.100.7", None)),
        ("10.0.0.2", {"X-Forwarded-For": "6.6.6.6, 198.51.100.7"}, Client("198.51.100.7", None)),
        ("10.0.0.2", {"X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.1.1.1"}, Client("198.51.100.7", None)),
        (
            "10.0.0.2",
            {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"},
            Client("198.51.100.7", "https"),
        ),
        ("10.0.0.2", {"X-Forwarded-For": "10.1.1.1, 10.2.2.2"}, Client("10.1.1.1", None)),
        ("10.0.0.2", {"X-Forwarded-For": "2001:db8::5"}, Client("2001:db8::5", None)),
        # The Forwarded header (RFC 7239), with ports, brackets and a scheme per hop.
        (
            "10.0.0.2",
            {"Forwarded": 'for=6.6.6.6, for="[2001:db8::5]:4711";proto=https, for=10.9.9.9:80;proto=http'},
            Client("2001:db8::5", "https"),
        ),
        ("10.0.0.2", {"Forwarded": "for=198.51.100.7:1234"}, Client("198.51.100.7", None)),
        # Garbled or obfuscated entries end the walk: nothing left of them is believed.
        ("10.0.0.2", {"X-Forwarded-For": "198.51.100.7, not-an-ip"}, None),
        ("10.0.0.2", {"X-Forwarded-For": "198.51.100.7, garbage, 10.3.3.3"}, Client("10.3.3.3", None)),
        ("10.0.0.2", {"Forwarded": "for=_hidden"}, None),
        ("10.0.0.2", {"X-Forwarded-Proto": "https"}, None),
        # From anyone else, the headers are ignored.
        ("192.0.2.1", {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}, None),
        ("192.0.2.1", {"Forwarded": "for=198.51.100.7;proto=https"}, None),
    ],
)
def test_the_client_behind_trusted_proxies(
    peer: str, headers: dict[str, str], expected: Client | None
) -> None:
    assert _client_of(peer, headers) == expected


def test_trusted_proxies_setting_parses_cidrs_and_refuses_garbage() -> None:
    assert [str(n) for n in parse_networks(" 10.0.0.0/8 ,, 192.0.2.1, ::1 ")] == [
        "10.0.0.0/8",
        "192.0.2.1/32",
        "::1/128",
    ]
    with pytest.raises(SystemExit):
        parse_networks("10.0.0.0/8, proxy.example")


async def _post_status(client: ChatClient, headers: dict[str, str]) -> int:
    body = {"chat_id": client.store.general_id, "contenido": "hola", "username": "ana"}
    async with client.http.post("/api/messages", json=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def _refused_after(client: ChatClient, headers: dict[str, str], limit: int) -> int:
    """Posts until one is refused (429); how many went through."""
    for passed in range(2 * limit + 1):
        status = await _post_status(client, headers)
        if status == 429:
            return passed
        assert status == 201
    raise AssertionError("never refused")


@pytest.mark.parametrize("trusted", [True, False])
async def test_forwarded_clients_have_their_own_limits_only_through_a_trusted_proxy(
    make_client: MakeClient, trusted: bool
) -> None:
    # The window is long: the second client's posts come right after the first one's refusal.
    client = await make_client(
        post_limit_user=0,
        post_limit_address=3,
        rate_window=3600.0,
        trusted_proxies=LOOPBACK if trusted else parse_networks("10.0.0.0/8"),
    )
    first = {"X-Forwarded-For": "198.51.100.1"}
    second = {"X-Forwarded-For": "6.6.6.6, 198.51.100.2"}  # the forged left part changes nothing
    assert 3 <= await _refused_after(client, first, 3) <= 6
    if trusted:
        assert await _post_status(client, second) == 201
        assert await _post_status(client, {"X-Forwarded-For": "198.51.100.2, 198.51.100.1"}) == 429
    else:  # the same peer, whatever the headers say
        assert await _post_status(client, second) == 429


@pytest.mark.parametrize(("trusted", "secure"), [(True, True), (False, False)])
async def test_the_cookie_is_secure_when_the_client_came_over_https(
    make_client: MakeClient, trusted: bool, secure: bool
) -> None:
    client = await make_client(trusted_proxies=LOOPBACK if trusted else parse_networks("10.0.0.0/8"))
    headers = {"X-Forwarded-For": "198.51.100.1", "X-Forwarded-Proto": "https"}
    async with client.http.post("/api/login", json={"username": "ana"}, headers=headers) as resp:
        assert resp.status == 201
        morsel = SimpleCookie(resp.headers["Set-Cookie"])[COOKIE_NAME]
    assert bool(morsel["secure"]) is secure
    plain = {"X-Forwarded-For": "198.51.100.1", "X-Forwarded-Proto": "http"}
    async with client.http.post("/api/login", json={"username": "ana"}, headers=plain) as resp:
        assert not SimpleCookie(resp.headers["Set-Cookie"])[COOKIE_NAME]["secure"]


async def test_the_cookie_origin_check_compares_scheme_host_and_port(make_client: MakeClient) -> None:
    client = await make_client(trusted_proxies=LOOPBACK)
    token = (await client.login("ana", status=201))["token"]
    cookie = {"Cookie": f"{COOKIE_NAME}={token}"}
    url = client.http.make_url("/")
    host, port = url.host, url.port
    assert host is not None
    assert port is not None
    body = {"chat_id": client.store.general_id, "contenido": "hola"}
    for origin, extra, status in [
        (f"http://{host}:{port}", {}, 201),
        (f"HTTP://{host.upper()}:{port}", {}, 201),
        (f"https://{host}:{port}", {}, 403),  # another scheme
        (f"http://{host}:{port + 1}", {}, 403),  # another port
        (f"http://{host}", {}, 403),  # port 80 is another port
        ("null", {}, 403),
        ("http://[::1", {}, 403),  # not even a URL
        # Behind the proxy, the client's scheme counts: an https page posts to an https origin.
        (f"https://{host}:{port}", {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.1"}, 201),
        (f"http://{host}:{port}", {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.1"}, 403),
    ]:
        headers = {**cookie, "Origin": origin, **extra}
        await client.call("POST", "/api/messages", json=body, headers=headers, status=status)


async def test_metrics_need_the_token_when_one_is_set(make_client: MakeClient) -> None:
    client = await make_client(metrics_token="scrape-me")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic scrape-me"}):
        body = await client.call("GET", "/metrics", headers=headers, status=401)
        assert "error" in body
    async with client.http.get("/metrics", headers={"Authorization": "Bearer scrape-me"}) as resp:
        assert resp.status == 200
        assert "chat_open_streams" in await resp.text()
    open_metrics = await make_client()
    async with open_metrics.http.get("/metrics") as resp:
        assert resp.status == 200


def test_proxy_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {"CHAT_SECRET": "x", "CHAT_TRUSTED_PROXIES": "10.0.0.0/8,::1", "CHAT_METRICS_TOKEN": "scrape-me"}
    )
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert settings.metrics_token == "scrape-me"
    assert "scrape-me" not in repr(settings)
    assert Settings.from_env({"CHAT_SECRET": "x"}).trusted_proxies == ()
