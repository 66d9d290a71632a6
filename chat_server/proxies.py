"""Who the client is behind a reverse proxy: its address and scheme, from trusted peers only.

Only a request whose peer is in CHAT_TRUSTED_PROXIES has its `Forwarded` (RFC 7239) or
`X-Forwarded-For` / `X-Forwarded-Proto` headers read; from any other peer they are ignored, since
anyone can send them. The client is found by walking the forwarded addresses from the right (the
entry our own proxy appended) past every trusted proxy: entries further left were written by the
client or by proxies we do not trust, and may be forged. The handlers then see a request clone
whose `remote` is the client's address and whose `scheme` is the one the client used, so rate
limits, logs, the cookie's `Secure` flag and the origin check all follow the client.

Hand-written rather than aiohttp-remotes: its strict classes refuse (400) a request whose chain
is not all trusted, where we ignore the headers, and none walks one list of networks from the right.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from .errors import Handler

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
SCHEMES = ("http", "https")


def parse_networks(raw: str) -> tuple[Network, ...]:
    """CHAT_TRUSTED_PROXIES: comma-separated CIDRs (a bare address is a /32 or /128)."""
    networks = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise SystemExit(f"CHAT_TRUSTED_PROXIES: not an address or CIDR: {part!r}") from None
    return tuple(networks)


@dataclass(frozen=True)
class Client:
    address: str
    scheme: str | None  # None when the proxy did not say


class TrustedProxies:
    def __init__(self, networks: Sequence[Network]) -> None:
        self.networks = tuple(networks)

    def trusts(self, address: str | None) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in network for network in self.networks)

    def client(self, request: web.BaseRequest) -> Client | None:
        """The client behind a trusted peer; None when the peer is not trusted or says nothing."""
        if not self.networks or not self.trusts(request.remote):
            return None
        if request.forwarded:
            hops = [(hop.get("for"), hop.get("proto")) for hop in request.forwarded]
        else:
            addresses = _split(request.headers.getall("X-Forwarded-For", ()))
            schemes = _split(request.headers.getall("X-Forwarded-Proto", ()))
            hops = [(a, None) for a in addresses]
            if hops and schemes:
                # One scheme (the usual `proxy_set_header X-Forwarded-Proto $scheme`) or one per
                # hop: either way the rightmost is the one our own proxy set.
                hops[-1] = (hops[-1][0], schemes[-1])
        return self._walk(hops)

    def _walk(self, hops: list[tuple[str | None, str | None]]) -> Client | None:
        """From the right: the first address that is not a trusted proxy is the client."""
        client: Client | None = None
        scheme: str | None = None
        for raw_for, raw_proto in reversed(hops):
            proto = (raw_proto or "").lower()
            scheme = proto if proto in SCHEMES else scheme
            ip = _ip(_strip_port(raw_for))
            if ip is None:
                break  # obfuscated or garbled: nothing left of it can be believed
            client = Client(str(ip), scheme)
            if not self.trusts(str(ip)):
                break
        return client


def _split(values: Iterable[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _strip_port(value: str | None) -> str | None:
    """`for=` values: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]` or `[2001:db8::1]:4711`."""
    if value is None:
        return None
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def _ip(value: str | None) -> Address | None:
    if not value:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


# The client's address as the proxy reported it, for the access log (which sees the original request).
client_address_key = web.RequestKey("client_address", str)


def proxy_middleware(trusted: TrustedProxies) -> Middleware:
    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        client = trusted.client(request)
        if client is None:
            return await handler(request)
        request[client_address_key] = client.address
        return await handler(request.clone(remote=client.address, scheme=client.scheme or request.scheme))

    return forwarded
