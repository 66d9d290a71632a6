"""No 5xx for any bytes: odd header values, integers, cookies and bodies each get a 4xx JSON
error (or, where the bytes mean something, the right success), on both stores, and nothing
wrong is stored. The requests are written byte for byte on a socket (tests/raw_http.py)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from urllib.parse import quote

import brotli

from chat_server import jsonutil

from .chat_client import ChatClient
from .raw_http import Headers, RawResponse, request

JSON = (b"Content-Type", b"application/json")
FORM = (b"Content-Type", b"application/x-www-form-urlencoded")
# method, target, headers, body
Case = tuple[str, bytes, Headers, bytes]


async def send_to(
    client: ChatClient, method: str, target: bytes, headers: Headers, body: bytes = b""
) -> RawResponse:
    assert client.http.port is not None
    return await request(client.http.port, method, target, headers, body)


async def stored(client: ChatClient) -> tuple[list[str], int]:
    """Every stored username, and how many messages there are."""
    async with client.store.connection() as db:
        names = [row[0] for row in await db.fetchall("SELECT username FROM usuarios ORDER BY id")]
        row = await db.fetchone("SELECT COUNT(*) FROM mensajes_v2")
    return names, int(row[0]) if row else 0


async def refused_without_trace(client: ChatClient, cases: list[Case]) -> list[str]:
    """Send each case; what answered other than a 4xx JSON error, or stored something."""
    problems = []
    for method, target, headers, body in cases:
        before = await stored(client)
        answer = await send_to(client, method, target, headers, body)
        if not answer.is_json_error():
            problems.append(
                f"{method} {target!r} {headers!r} {body[:40]!r}: {answer.status} {answer.body[:80]!r}"
            )
        if await stored(client) != before:
            problems.append(f"{method} {target!r} {headers!r} {body[:40]!r}: stored something")
    return problems


def message(client: ChatClient, username: bytes | None = None) -> bytes:
    body: dict[str, object] = {"chat_id": client.store.general_id, "contenido": "hola"}
    if username is not None:
        body["username"] = username.decode()
    return jsonutil.dumps(body)


# -- header values ---------------------------------------------------------------------------


HEADER_TEXT = [
    ("lucía".encode("latin-1"), "lucía"),  # what a browser's fetch sends
    ("lucía".encode(), "lucía"),  # what most other clients send
    (b"zed\xff", "zed\xff"),  # not UTF-8: read as Latin-1, never as 'zed?'
    ("Øyvind".encode("latin-1"), "Øyvind"),
]


async def test_header_values_are_utf8_or_else_latin1_and_odd_ones_get_4xx_json(client: ChatClient) -> None:
    for sent, meant in HEADER_TEXT:
        posted = await send_to(
            client, "POST", b"/api/messages", [JSON, (b"X-Username", sent)], message(client)
        )
        assert (posted.status, posted.json()["message"]["username"]) == (201, meant), sent
        names, _ = await stored(client)
        assert names[-1] == meant
        again = await send_to(client, "GET", b"/api/me", [(b"X-Username", sent)])
        assert (again.status, again.json()["user"]["username"]) == (200, meant)

    general = str(client.store.general_id).encode()
    cases = [
        ("GET", b"/api/me", [(b"Authorization", b"Bearer v1.1.\xc3\xa9")], b""),
        ("GET", b"/api/me", [(b"Authorization", b"Bearer \xff\xfe")], b""),
        ("GET", b"/api/me", [(b"Authorization", "Bearer v1.\u0665.x".encode())], b""),
        ("GET", b"/api/me?token=%C3%A9", [], b""),
        ("GET", b"/api/stream?chat_id=" + general, [(b"Last-Event-ID", b"--5")], b""),
        ("GET", b"/api/stream?chat_id=" + general, [(b"Last-Event-ID", "\u0665".encode())], b""),
        ("GET", b"/api/stream?chat_id=" + general, [(b"Last-Event-ID", b"\xff")], b""),
        ("POST", b"/api/login", [JSON, (b"Accept-Language", b"\xff")], b'{"username": ""}'),
    ]
    assert await refused_without_trace(client, cases) == []


# -- integers --------------------------------------------------------------------------------

BAD_INTEGERS = [
    "--5",
    "+5",
    " 5",
    "5 ",
    "\u0665",
    "\uff11",
    "1_000",
    "0x10",
    "5.0",
    "1e3",
    "",
    "-",
    "9" * 5000,
    "9" * 19,
]


async def test_integers_in_queries_paths_and_bodies_are_one_strict_pattern(client: ChatClient) -> None:
    cases: list[Case] = []
    for text in BAD_INTEGERS:
        quoted = quote(text).encode()
        cases.append(("GET", b"/api/messages?chat_id=" + quoted, [], b""))
        cases.append(("GET", b"/api/messages?chat_id=1&after_id=" + quoted, [], b""))
        cases.append(("POST", b"/api/chats/" + (quoted or b"%20") + b"/read", [JSON], b'{"last_read_id": 0}'))
    # In bodies: JSON integers in range, or strings of the same pattern.
    values = [*(jsonutil.dumps(t) for t in BAD_INTEGERS), b"1e400", b"-1", b"2147483648", b"9" * 30]
    values += [b"true", b"5.5", b"[5]", b'{"id": 5}', b"null"]
    cases += [
        ("POST", b"/api/messages", [JSON], b'{"chat_id": %s, "contenido": "x", "username": "ana"}' % v)
        for v in values
    ]
    cases += [("POST", b"/api/messages", [FORM], b"chat_id=--5&contenido=x&username=ana")]
    assert await refused_without_trace(client, cases) == []


# -- cookies ---------------------------------------------------------------------------------


async def test_a_foreign_or_broken_cookie_neither_breaks_a_login_nor_makes_one(client: ChatClient) -> None:
    token = (await client.login("ana"))["token"].encode()
    planted = [
        b"planted=caf\xe9",  # Latin-1, from a sibling subdomain
        "planted=café".encode(),
        b'planted="unterminated',
        b"=;;=; ; planted",
        b"chat_token=\xe9\xff",
        b"chat_token=planted-by-a-sibling",  # the same name, Domain=.example.com: sent beside ours
        b'chat_token=""',
    ]
    for cookie in planted:
        for header in (cookie + b"; chat_token=" + token, b"chat_token=" + token + b"; " + cookie):
            answer = await send_to(client, "GET", b"/api/me", [(b"Cookie", header)])
            assert (answer.status, answer.json()["user"]["username"]) == (200, "ana"), header
    # Alone, a login cookie that is not ours identifies no one.
    cases = [
        ("GET", b"/api/me", [(b"Cookie", b"chat_token=" + value)], b"")
        for value in (b"\xc3\xa9", b"v1.1.\xe9", b"v1.\xd9\xa5.x", b"v1.99999999999999999999.x", b"%ff")
    ]
    assert await refused_without_trace(client, cases) == []


# -- bodies ----------------------------------------------------------------------------------


async def test_bodies_that_cannot_be_read_get_4xx_json(client: ChatClient) -> None:
    login = b'{"username": "ana"}'
    multipart = b"multipart/form-data; boundary=zz"
    cases = [
        ("POST", b"/api/login", [(b"Content-Type", FORM[1] + b"; charset=klingon")], b"username=ana"),
        ("POST", b"/api/login", [FORM], b"username=luc%ED"),
        ("POST", b"/api/login", [FORM], b"username=luc\xeda"),
        ("POST", b"/api/login", [(b"Content-Type", FORM[1] + b"; charset=ascii")], "username=lucía".encode()),
        ("POST", b"/api/login", [(b"Content-Type", b"multipart/form-data")], b"--zz\r\n"),
        ("POST", b"/api/login", [(b"Content-Type", multipart)], b"--zz\r\ngarbage"),
        ("POST", b"/api/login", [(b"Content-Type", multipart)], b"--zz\r\n\r\nana\r\n--zz--\r\n"),
        (
            "POST",
            b"/api/login",
            [(b"Content-Type", multipart)],
            b'--zz\r\nContent-Disposition: form-data; name="username"\r\n'
            b"Content-Type: text/plain; charset=klingon\r\n\r\nana\r\n--zz--\r\n",
        ),
        (
            "POST",
            b"/api/login",
            [(b"Content-Type", multipart)],
            b'--zz\r\nContent-Disposition: form-data; name="username"\r\n\r\nluc\xeda\r\n--zz--\r\n',
        ),
        *[
            ("POST", b"/api/login", [JSON, (b"Content-Encoding", encoding)], login)
            for encoding in (b"gzip", b"deflate", b"br", b"klingon", b"gzip, gzip")
        ],
        ("POST", b"/api/login", [JSON], b'{"username": "luc\\ud800a"}'),
        ("POST", b"/api/login", [JSON], b'{"username": "luc\xeda"}'),
        ("POST", b"/api/login", [JSON], b"[" * 100_000),
        ("POST", b"/api/login", [JSON], b'{"a":' * 2000 + b"1" + b"}" * 2000),
        ("POST", b"/api/login", [JSON], b'{"username": "' + b"a" * 70_000 + b'"}'),
        ("POST", b"/api/login", [JSON], b'{"username": {"$ne": null}}'),
        ("POST", b"/api/login", [JSON], b'{"username": ["admin"]}'),
        ("POST", b"/api/login", [JSON], b'{"username": 5}'),
        ("POST", b"/api/login", [JSON], b'"admin"'),
        ("POST", b"/api/messages", [JSON], b'{"chat_id": 1, "contenido": ["x"], "username": "ana"}'),
        ("POST", b"/api/chats/dm", [JSON], b'{"username": "admin", "with_username": 7}'),
        ("POST", b"/api/send", [JSON], b'{"usuario": "ana", "mensaje": {"x": 1}}'),
        ("POST", b"/api/send", [FORM], b"usuario=ana&mensaje=%FF"),
    ]
    assert await refused_without_trace(client, cases) == []


COMPRESSORS: list[tuple[bytes, Callable[[bytes], bytes]]] = [
    (b"gzip", gzip.compress),
    (b"deflate", zlib.compress),
    (b"deflate", lambda data: zlib.compress(data, wbits=-zlib.MAX_WBITS)),  # raw, as some clients send
    (b"br", lambda data: bytes(brotli.compress(data, quality=1))),
]


async def test_bodies_that_are_what_they_say_are_read(client: ChatClient) -> None:
    for n, (encoding, compress) in enumerate(COMPRESSORS):
        body = compress(b'{"username": "ana%d"}' % n)
        answer = await send_to(client, "POST", b"/api/login", [JSON, (b"Content-Encoding", encoding)], body)
        assert (answer.status, answer.json()["user"]["username"]) == (201, f"ana{n}"), encoding
    headers = [(b"Content-Type", FORM[1] + b"; charset=latin-1")]
    answer = await send_to(client, "POST", b"/api/login", headers, b"username=luc%EDa")
    assert (answer.status, answer.json()["user"]["username"]) == (201, "lucía")
    # Small on the wire, too large once decompressed: 413, like a large body.
    for encoding, compress in COMPRESSORS:
        bomb = compress(b'{"username": "' + b"a" * 1_000_000 + b'"}')
        answer = await send_to(client, "POST", b"/api/login", [JSON, (b"Content-Encoding", encoding)], bomb)
        assert (answer.status, answer.is_json_error()) == (413, True), encoding
