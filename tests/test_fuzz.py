"""Property-based fuzzing of a real server (python run.py on the SQLite store) against
docs/openapi.json, with schemathesis: inputs that fit the description and inputs that break it,
for every operation but the event stream. No answer may be a 5xx, and every answer must be
as described (status, content type, headers, body). Bounded: EXAMPLES per operation and mode.

Then raw bytes that schemathesis cannot send, written on a socket by Hypothesis: header values,
cookies and form bodies (RAW_EXAMPLES each). Every answer is a success or a 4xx JSON error, a
login cookie works whatever rides along with it, and every name stored is one a new user may
take."""

from __future__ import annotations

import gzip
import os
import signal
import sqlite3
import subprocess
import sys
import time
import unicodedata
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import brotli
import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, openapi
from schemathesis.checks import not_a_server_error
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chat_server.names import refuse_new_name

from .openapi_check import documented_routes, spec
from .raw_http import Headers, RawResponse, encode_request, send_blocking
from .services import free_port

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
# Examples per operation and generation mode: about 30 operation-modes, a few ms each.
EXAMPLES = int(os.environ.get("CHAT_FUZZ_EXAMPLES", "40"))
# A stream never ends: it is described, but not fuzzed.
NOT_FUZZED = {("GET", "/api/stream")}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SCHEMA = openapi.from_dict(spec())


def _can_be_wrong(method: str, path: str) -> bool:
    """Whether an input can break the description (a body, or a parameter more constrained
    than any string): else there are no negative cases to generate."""
    operation = spec()["paths"][path][method.lower()]
    parameters = [
        spec()["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p
        for p in operation.get("parameters", [])
    ]
    return "requestBody" in operation or any(p["schema"] != {"type": "string"} for p in parameters)


CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in sorted(documented_routes() - NOT_FUZZED)
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _can_be_wrong(method, path)
]


@dataclass(frozen=True)
class Server:
    base: str
    port: int
    database: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`python run.py` on a free port, with a fresh SQLite database."""
    folder = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{folder}/chat.sqlite3",
        "CHAT_SECRET": "fuzz",
        # The fuzzed Forwarded and X-Forwarded-For headers are read, as behind a proxy.
        "CHAT_TRUSTED_PROXIES": "127.0.0.1/32",
    }
    env.pop("REDIS_URL", None)
    with (folder / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "run.py", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, process)
        yield Server(base, port, folder / "chat.sqlite3")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.05)  # the process is starting: nothing to wait on but its port
    raise RuntimeError(f"the server did not answer within {START_TIMEOUT}s")


def bounded(examples: int) -> settings:
    """Hypothesis settings of every fuzzing test here: a fixed number of examples, no deadline
    (a loaded machine is slow, not wrong), no example database between runs."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_fuzz(server: Server, method: str, path: str, mode: GenerationMode) -> None:
    operation = SCHEMA[path][method.lower()]
    with requests.Session() as session:

        @bounded(EXAMPLES)
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: Case[Any]) -> None:
            response = case.call(base_url=server.base, session=session, timeout=10)
            case.validate_response(response, checks=CHECKS)

        fuzz()


# -- raw bytes: headers, cookies and form bodies ---------------------------------------------
# schemathesis speaks through `requests`, which refuses or re-encodes the bytes that broke the
# server (Latin-1 header values, raw bytes, lying Content-Encodings). Hypothesis writes these
# requests byte for byte on a socket. Header values hold any byte the HTTP parser lets through
# (tab, visible ASCII, 0x80-0xFF): the parser refuses the others itself, with a plain 400,
# before the application sees them (docs/api.md, "Bytes").
RAW_EXAMPLES = int(os.environ.get("CHAT_FUZZ_RAW_EXAMPLES", "200"))
RAW_SETTINGS = bounded(RAW_EXAMPLES)
HEADER_BYTE = st.sampled_from([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
VISIBLE = st.characters(blacklist_categories=("Cc", "Cs"))
header_value = st.one_of(
    st.lists(HEADER_BYTE, max_size=40).map(bytes),
    st.text(VISIBLE, max_size=20).map(lambda t: t.encode("utf-8")),
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF).filter(lambda c: c != "\x7f"), max_size=20
    ).map(lambda t: t.encode("latin-1")),
    st.sampled_from([b"--5", b"+5", b"\xd9\xa5", b"9" * 5000, b"Bearer v1.1.x", b"Bearer \xe9", b"null"]),
)
HEADER_NAMES = (
    b"X-Username Authorization Cookie Last-Event-ID Origin Accept Content-Type Content-Encoding "
    b"X-Forwarded-For Forwarded Accept-Language"
).split()
# (method, target, body): every route but a stream that would start (chat 999999 does not exist).
TARGETS = [
    ("GET", b"/api/me", b""),
    ("GET", b"/api/chats", b""),
    ("GET", b"/api/messages?chat_id=1", b""),
    ("GET", b"/api/messages?usuario=admin", b""),
    ("GET", b"/api/stream?chat_id=999999", b""),
    ("GET", b"/healthz", b""),
    ("GET", b"/metrics", b""),
    ("POST", b"/api/login", b'{"username": "ana"}'),
    ("POST", b"/api/logout", b""),
    ("POST", b"/api/messages", b'{"chat_id": 1, "contenido": "hola"}'),
    ("POST", b"/api/send", b'{"mensaje": "hola"}'),
    ("POST", b"/api/chats/dm", b'{"with_username": "admin"}'),
    ("POST", b"/api/chats/1/read", b'{"last_read_id": 0}'),
    ("POST", b"/api/chats/1/typing", b""),
    ("GET", b"/api/search?q=hola", b""),
    ("GET", b"/api/chats?limit=5", b""),
    ("POST", b"/api/users/2/login-link", b""),
    ("DELETE", b"/api/users/2/sessions", b""),
]


def _answer(server: Server, method: str, target: bytes, headers: Headers, body: bytes) -> RawResponse:
    request = encode_request(method.encode(), target, headers, body)
    return _checked(send_blocking(server.port, request), request)


def _checked(answer: RawResponse, request: bytes) -> RawResponse:
    """A success, or a 4xx with the API's error envelope."""
    assert answer.status < 500, (request[:500], answer)
    if answer.status >= 400:
        assert answer.is_json_error(), (request[:500], answer)
    return answer


def _nothing_wrong_stored(server: Server) -> None:
    """Every stored name is one the server would accept as new (or admin's)."""
    with closing(sqlite3.connect(server.database)) as db:
        names = [row[0] for row in db.execute("SELECT username FROM usuarios")]
    for name in names:
        assert name == unicodedata.normalize("NFC", name).strip(), name
        if name != "admin":
            refuse_new_name(name)


def test_fuzz_header_values(server: Server) -> None:
    @RAW_SETTINGS
    @given(
        target=st.sampled_from(TARGETS),
        headers=st.lists(
            st.tuples(st.sampled_from(HEADER_NAMES), header_value),
            min_size=1,
            max_size=4,
            unique_by=lambda header: header[0],  # a repeated Content-Type is the parser's 400
        ),
    )
    def fuzz(target: tuple[str, bytes, bytes], headers: Headers) -> None:
        method, path, body = target
        if body and not any(name == b"Content-Type" for name, _ in headers):
            headers = [(b"Content-Type", b"application/json"), *headers]
        _answer(server, method, path, headers, body)

    fuzz()
    _nothing_wrong_stored(server)


def test_fuzz_cookies(server: Server) -> None:
    """A login cookie still works whatever other cookies ride along; alone, odd ones are 4xx.
    A POST it carries goes through the origin check, whatever Origin and Host say."""
    login = _answer(
        server, "POST", b"/api/login", [(b"Content-Type", b"application/json")], b'{"username": "galleta"}'
    )
    token = login.json()["token"].encode()
    cookie_part = st.lists(HEADER_BYTE.filter(lambda b: b != ord(";")), max_size=20).map(bytes)
    # Planted cookies may take our cookie's name (a sibling subdomain's), never its value.
    cookie_name = st.one_of(cookie_part, st.just(b"chat_token"))
    planted = st.lists(st.tuples(cookie_name, cookie_part), max_size=3).map(
        lambda pairs: [n + b"=" + v for n, v in pairs if token not in v]
    )

    @RAW_SETTINGS
    @given(
        planted=planted,
        with_login=st.booleans(),
        first=st.booleans(),
        origin=st.one_of(header_value, st.sampled_from([b"http://[", b"http://127.0.0.1:1", b"null"])),
        host=st.one_of(st.none(), header_value),
    )
    def fuzz(planted: list[bytes], with_login: bool, first: bool, origin: bytes, host: bytes | None) -> None:
        pairs = [*planted]
        if with_login:
            pairs.insert(0 if first else len(pairs), b"chat_token=" + token)
        cookie = (b"Cookie", b"; ".join(pairs))
        answer = _answer(server, "GET", b"/api/me", [cookie], b"")
        if with_login:
            assert (answer.status, answer.json()["user"]["username"]) == (200, "galleta"), pairs
        headers = [cookie, (b"Origin", origin), (b"Content-Type", b"application/json")]
        target = b"/api/chats/1/read"
        request = encode_request(b"POST", target, headers, b'{"last_read_id": 0}')
        if host is not None:  # in place of the Host line encode_request writes
            request = request.replace(b"Host: 127.0.0.1", b"Host: " + host, 1)
        _checked(send_blocking(server.port, request), request)

    fuzz()


FORM_TYPES = [b"application/x-www-form-urlencoded", b"multipart/form-data"]
CHARSETS = [None, b"utf-8", b"latin-1", b"ascii", b"utf-16", b"klingon", b'"utf-8"', b""]
FIELDS = [b"username", b"usuario", b"mensaje", b"chat_id", b"contenido", b"password"]
COMPRESS: dict[bytes, Any] = {b"gzip": gzip.compress, b"deflate": zlib.compress, b"br": brotli.compress}


@st.composite
def form_body(draw: st.DrawFn) -> tuple[Headers, bytes]:
    """A form body, well or badly made, in some charset, maybe compressed (truthfully or not)."""
    media = draw(st.sampled_from(FORM_TYPES))
    charset = draw(st.sampled_from(CHARSETS))
    codec = draw(st.sampled_from(["utf-8", "latin-1", "utf-16"]))
    fields = draw(st.lists(st.tuples(st.sampled_from(FIELDS), st.text(VISIBLE, max_size=12)), max_size=4))
    raw_tail = draw(st.binary(max_size=20))
    if media == FORM_TYPES[0]:
        body = b"&".join(
            name + b"=" + quote(value, encoding=codec, errors="replace").encode() for name, value in fields
        )
        content_type = media
    else:
        boundary = draw(st.sampled_from([b"zz", b"----x", b""]))
        parts = [
            b"--"
            + boundary
            + b'\r\nContent-Disposition: form-data; name="'
            + name
            + b'"\r\n\r\n'
            + value.encode(codec, errors="replace")
            + b"\r\n"
            for name, value in fields
        ]
        body = b"".join(parts) + draw(st.sampled_from([b"--" + boundary + b"--\r\n", b""]))
        content_type = media + (b"; boundary=" + boundary if boundary else b"")
    body += raw_tail
    if charset is not None:
        content_type += b"; charset=" + charset
    headers: Headers = [(b"Content-Type", content_type)]
    encoding = draw(st.sampled_from([None, *COMPRESS]))
    if encoding is not None:
        headers.append((b"Content-Encoding", encoding))
        if draw(st.booleans()):
            body = COMPRESS[encoding](body)
    return headers, body


def test_fuzz_form_bodies(server: Server) -> None:
    posts = [(m, t) for m, t, _ in TARGETS if m == "POST"]

    @RAW_SETTINGS
    @given(target=st.sampled_from(posts), form=form_body())
    def fuzz(target: tuple[str, bytes], form: tuple[Headers, bytes]) -> None:
        headers, body = form
        _answer(server, target[0], target[1], headers, body)

    fuzz()
    _nothing_wrong_stored(server)
