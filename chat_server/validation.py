"""Turning request input into typed values at the edge; every failure is a 400."""

from __future__ import annotations

import unicodedata
from typing import Any

from aiohttp import web

from . import jsonutil
from .errors import BadRequest

# The seed's column: usuarios.username VARCHAR(100).
MAX_USERNAME_CHARS = 100
# Ids are INT columns in the seed's schema.
MAX_ID = 2**31 - 1
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def read_body(request: web.Request) -> dict[str, Any]:
    """A JSON object or a form-encoded body as a dict; an empty body is {}."""
    if request.content_type in FORM_TYPES:
        return dict(await request.post())
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = jsonutil.loads(raw)
    except ValueError:
        raise BadRequest("malformed JSON body") from None
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object")
    return body


def clean_username(value: Any, field: str = "username") -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string", field=field)
    name = value.strip()
    if not name:
        raise BadRequest(f"{field} is required", field=field)
    if len(name) > MAX_USERNAME_CHARS:
        raise BadRequest(f"{field} is longer than {MAX_USERNAME_CHARS} characters", field=field)
    if any(unicodedata.category(c) == "Cc" for c in name):
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
        text = value.strip()
        if not text.lstrip("-").isdigit() or not text.isascii():
            raise BadRequest(f"{field} must be an integer", field=field)
        value = int(text)
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
