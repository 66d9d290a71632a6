"""GET /api/openapi.json: the OpenAPI 3.1 description of the whole API.

It is one file, docs/openapi.json, written by hand and served as it is; tests/test_openapi.py
fails when a route is missing from it or a response differs from what it says, and
tests/test_fuzz.py fuzzes the server against it.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from aiohttp import web

_ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def spec_bytes() -> bytes:
    if (_ROOT / "setup.cfg").is_file():  # a source tree
        return (_ROOT / "docs" / "openapi.json").read_bytes()
    # `pip install .` ships docs/openapi.json as package data of chat_server.docs (see setup.cfg).
    return (resources.files("chat_server.docs") / "openapi.json").read_bytes()


async def openapi_handler(request: web.Request) -> web.Response:
    return web.Response(body=spec_bytes(), content_type="application/json")


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/openapi.json", openapi_handler)
