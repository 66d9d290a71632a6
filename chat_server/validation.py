"""Turning request input into typed values at the edge; every failure is a 400."""

from __future__ import annotations

import asyncio
import codecs
import re
import unicodedata
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from . import jsonutil
from .edge import body_bytes
from .errors import BadRequest, RequestTimeout
from .settings import settings_key

# The seed's column: usuarios.username VARCHAR(100).
MAX_USERNAME_CHARS = 100
# Ids are INT columns in the seed's schema.
MAX_ID = 2**31 - 1
URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
# An integer as text: ASCII digits only (int() also takes ' 5', '+5', '1_000' and
# Arabic-Indic digits), at most
# one minus sign, and few enough digits that int() never meets its 4300-digit limit.
INTEGER = re.compile(r"-?[0-9]{1,18}")
# Unicode's control characters (category Cc, fixed by its stability policy): one regex search
# instead of a category look-up a character.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# More fields than any route reads, by far: a body of a million empty fields is refused early.
MAX_FORM_FIELDS = 100


async def read_body(request: web.Request) -> dict[str, Any]:
    """A JSON object or a form-encoded body as a dict; an empty body is {}. A body that cannot
    be decoded (an unknown charset, bytes that are not in it, a broken multipart) is a 400. It
    must arrive within CHAT_BODY_TIMEOUT: a sender that trickles it would hold a connection."""
    if request.content.is_eof():
        # All of it is here (a small body comes with its headers): nothing to wait for, so no
        # timer to arm and cancel.
        return await _read_body(request)
    try:
        async with asyncio.timeout(request.app[settings_key].body_timeout):
            return await _read_body(request)
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None


async def _read_body(request: web.Request) -> dict[str, Any]:
    if request.content_type == URLENCODED:
        return _urlencoded(await body_bytes(request), request.charset or "utf-8")
    if request.content_type == MULTIPART:
        if request.headers.get("Content-Encoding", "").strip().lower() not in ("", "identity"):
            raise BadRequest("a multipart body cannot be compressed")
        try:
            return dict(await request.post())
        except (ValueError, LookupError):  # UnicodeDecodeError is a ValueError
            raise BadRequest("malformed multipart body") from None
    raw = await body_bytes(request)
    if not raw.strip():
        return {}
    try:
        body = jsonutil.loads(raw)
    except ValueError:
        raise BadRequest("malformed JSON body") from None
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object")
    return body


def _urlencoded(raw: bytes, charset: str) -> dict[str, Any]:
    """Strictly decoded: aiohttp's own parser puts U+FFFD where bytes are not in the charset,
    which would then be stored as if the client had sent it."""
    try:
        codecs.lookup(charset)
        text = raw.decode(charset)
        pairs = parse_qsl(
            text, keep_blank_values=True, encoding=charset, errors="strict", max_num_fields=MAX_FORM_FIELDS
        )
    except LookupError:
        raise BadRequest(f"unknown charset {charset!r}") from None
    except ValueError:  # UnicodeDecodeError, or too many fields
        raise BadRequest(f"the form body is not valid {charset}") from None
    return dict(pairs)


def clean_username(value: Any, field: str = "username") -> str:
    """A name as given, in NFC and trimmed. Whether it is someone's, or may become a new user's,
    is for chat_server/names.py."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string", field=field)
    name = unicodedata.normalize("NFC", value).strip()
    if not name:
        raise BadRequest(f"{field} is required", field=field)
    if len(name) > MAX_USERNAME_CHARS:
        raise BadRequest(f"{field} is longer than {MAX_USERNAME_CHARS} characters", field=field)
    if CONTROL.search(name):
        raise BadRequest(f"{field} contains control characters", field=field)
    return name


def required_text(body: dict[str, Any], field: str, max_chars: int) -> str:
    value = body.get(field)
    if value is None:
        raise BadRequest(f"{field} is required", field=field)
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string", field=field)
    if not value.strip():
        raise BadRequest(f"{field} is empty", field=field)
    if len(value) > max_chars:
        raise BadRequest(f"{field} is longer than {max_chars} characters", field=field, max_chars=max_chars)
    return value


def int_value(value: Any, field: str, *, minimum: int = 1, maximum: int = MAX_ID) -> int:
    """An integer from JSON (a number) or a query/form string; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadRequest(f"{field} must be an integer", field=field)
    if isinstance(value, str):
        if not INTEGER.fullmatch(value):
            raise BadRequest(f"{field} must be an integer", field=field)
        value = int(value)
    number: int = value
    if not minimum <= number <= maximum:
        raise BadRequest(f"{field} must be between {minimum} and {maximum}", field=field)
    return number


def required_int(body: dict[str, Any], field: str, *, minimum: int = 1) -> int:
    if body.get(field) is None:
        raise BadRequest(f"{field} is required", field=field)
    return int_value(body[field], field, minimum=minimum)


def optional_int(params: Any, field: str, *, minimum: int = 1, maximum: int = MAX_ID) -> int | None:
    value = params.get(field)
    return None if value is None else int_value(value, field, minimum=minimum, maximum=maximum)


# Search text: longer queries are not what a search box sends.
MAX_SEARCH_CHARS = 100
# Words shorter than InnoDB's innodb_ft_min_token_size (3) are not in its full-text index.
MIN_SEARCH_WORD = 3
MAX_SEARCH_WORDS = 8


def search_text(params: Any, field: str) -> str:
    value = params.get(field)
    if value is None or not value.strip():
        raise BadRequest(f"{field} is required", field=field)
    text: str = value.strip()
    if len(text) > MAX_SEARCH_CHARS or CONTROL.search(text):
        raise BadRequest(f"{field} must be at most {MAX_SEARCH_CHARS} printable characters", field=field)
    return text


def search_words(text: str) -> list[str]:
    """The words of a message search (letters and digits), each required in what is found."""
    words = [w for w in re.findall(r"[^\W_]+", text) if len(w) >= MIN_SEARCH_WORD][:MAX_SEARCH_WORDS]
    if not words:
        raise BadRequest(f"q needs a word of at least {MIN_SEARCH_WORD} letters or digits", field="q")
    return words
