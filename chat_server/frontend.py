"""The browser client at `/`: plain files from chat_server/static/, no build step.

The files are the ones in that folder when the server starts (the page's ES modules, its
stylesheet and icon), so a request can only ever reach one of them. They are
revalidated on every load (`no-cache` with an ETag), so a new version is picked up at once,
and served with a Content-Security-Policy that allows only our own scripts: even a rendering
mistake could not run text from a message.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .errors import NotFound

STATIC = Path(__file__).resolve().parent / "static"
# Read once: a name outside this set is a 404 without touching the file system.
FILES = frozenset(p.name for p in STATIC.iterdir() if p.is_file() and p.name != "index.html")
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers=HEADERS)


async def static_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in FILES:
        raise NotFound("unknown file", name=name)
    return web.FileResponse(STATIC / name, headers=HEADERS)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_file)
