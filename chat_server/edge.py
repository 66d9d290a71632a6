"""Header bytes made into text once, at the edge, before any handler reads them.

aiohttp decodes header values as UTF-8 with `surrogateescape`: a byte that is not UTF-8 reaches
the application as a lone surrogate, which fails far away (encoding for the database, JSON) as
a 500, or is stored (`zed\\udcff`). A browser's `fetch` sends header values with characters up
to U+00FF as single Latin-1 bytes (`X-Username: lucía` arrives as `luc\\xeda`), so such values
are decoded here as UTF-8 when they are UTF-8 and as Latin-1 otherwise: every byte string is
one of the two, and handlers only ever see real text.

Cookie values are ASCII by RFC 6265 (browsers send what a sibling subdomain planted all the
same): a cookie pair that is not is dropped here, so it cannot break the user's requests.
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from .errors import Handler


def header_text(value: str) -> str:
    """A header value as the client meant it: its bytes as UTF-8, or else as Latin-1."""
    if value.isascii():
        return value
    raw = value.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def ascii_cookies(value: str) -> str:
    """The Cookie header without the pairs that are not ASCII (never ours)."""
    return "; ".join(pair for pair in value.split(";") if pair.isascii()).strip()


@web.middleware
async def decode_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Hand the handler a request whose header values are text (see the module's docstring)."""
    if all(value.isascii() for value in request.headers.values()):
        return await handler(request)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        headers.add(name, ascii_cookies(value) if name.lower() == "cookie" else header_text(value))
    return await handler(request.clone(headers=headers))
