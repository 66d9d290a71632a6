"""What arrives on the wire, made safe once at the edge: header values as text, bodies decoded.

aiohttp decodes header values as UTF-8 with `surrogateescape`: a byte that is not UTF-8 reaches
the application as a lone surrogate, which fails far away (encoding for the database, JSON) as
a 500, or is stored (`zed\\udcff`). A browser's `fetch` sends header values with characters up
to U+00FF as single Latin-1 bytes (`X-Username: lucía` arrives as `luc\\xeda`), so such values
are decoded here as UTF-8 when they are UTF-8 and as Latin-1 otherwise: every byte string is
one of the two, and handlers only ever see real text.

Cookie values are ASCII by RFC 6265 (browsers send what a sibling subdomain planted all the
same): a cookie pair that is not is dropped here, so it cannot break the user's requests.

Request bodies are decompressed here, not by aiohttp (`handler_args` in app.py turns its
`auto_decompress` off): aiohttp decompresses inside its HTTP parser, where a body that is not
what its Content-Encoding says fails, depending on how the bytes were split into packets, either
in the handler or in the parser, which answers a plain-text 400 that no middleware sees. Here the
failure is always a 400 JSON, and the decompressed size is bounded like the body's.
"""

from __future__ import annotations

import zlib

import brotli
from aiohttp import web
from multidict import CIMultiDict

from .errors import BadRequest, Handler

# Cookies of one name tried in turn: ours, and whatever siblings planted beside it.
MAX_SAME_NAME_COOKIES = 4
# Requests larger than this are refused with 413, compressed or not: a message is a few KiB.
MAX_BODY_BYTES = 64 * 1024


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


def cookie_values(request: web.Request, name: str) -> list[str]:
    """Every value the Cookie header gives `name`, in order (at most a few). A sibling subdomain
    may plant a cookie of the same name (`Domain=.example.com`); the browser sends both, and
    `request.cookies` keeps only the last, so the caller tries each until one verifies."""
    values = []
    for pair in request.headers.get("Cookie", "").split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            values.append(value.strip().strip('"'))
    return values[:MAX_SAME_NAME_COOKIES]


@web.middleware
async def decode_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Hand the handler a request whose header values are text (see the module's docstring)."""
    if "".join(request.headers.values()).isascii():  # one C call, not a generator step a header
        return await handler(request)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        headers.add(name, ascii_cookies(value) if name.lower() == "cookie" else header_text(value))
    return await handler(request.clone(headers=headers))


async def body_bytes(request: web.Request) -> bytes:
    """The request body, decompressed per its Content-Encoding (gzip, deflate or br)."""
    raw = await request.read()
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding in ("", "identity"):
        return raw
    limit = MAX_BODY_BYTES
    try:
        if coding in ("gzip", "x-gzip"):
            body = _inflate(zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), raw, limit)
        elif coding == "deflate":
            # RFC 9110's deflate is zlib-wrapped; some clients send the raw stream.
            wbits = zlib.MAX_WBITS if raw[:1] and raw[0] & 0x0F == 8 else -zlib.MAX_WBITS
            body = _inflate(zlib.decompressobj(wbits=wbits), raw, limit)
        elif coding == "br":
            decompressor = brotli.Decompressor()
            body = decompressor.process(raw, output_buffer_limit=limit + 1)
            if len(body) <= limit and not decompressor.is_finished():
                raise BadRequest("the request body is not complete br data")
        else:
            raise BadRequest(f"unsupported Content-Encoding {coding!r}: use gzip, deflate or br")
    except (zlib.error, brotli.error):
        raise BadRequest(f"the request body is not {coding} data") from None
    if len(body) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    return body


def _inflate(decompressor: zlib._Decompress, raw: bytes, limit: int) -> bytes:
    body = decompressor.decompress(raw, limit + 1)
    if len(body) <= limit and not decompressor.eof:
        raise BadRequest("the request body is not complete compressed data")
    return body
