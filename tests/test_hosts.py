"""Several hosts for real: two chat server hosts (network namespaces, each on its own veth into a
bridge) behind nginx, MariaDB and Redis reached over the bridge. One host's cable is cut under
load: its clients come back through nginx on the other host and get every message exactly once;
the cable is plugged back and the host takes new streams again."""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from chat_server.loadtest import NO_LIMITS

from .chat_client import WAIT, Follower, stored_ids
from .deployment import Nginx, require_nginx, require_root
from .netns import Host, Network
from .services import ChatServer, PrivateMariaDB, PrivateRedis

PORT = 8080
# Servers beat every second; a test client hearing nothing for 3 s reconnects (see Follower).
HEARTBEAT = 1.0
SILENCE = 3.0
# Above the site's proxy_read_timeout (10 s): nginx, not the client, gives up on a dead host.
POST_TIMEOUT = 15.0
OPEN_STREAMS = re.compile(r"^chat_open_streams (\S+)$", re.MULTILINE)


class OpenMariaDB(PrivateMariaDB):
    """A throwaway MariaDB that lets in root from the hosts' addresses (no grant tables)."""

    def command(self) -> list[str]:
        return [*super().command(), "--skip-grant-tables"]


class HostServer(ChatServer):
    """`python run.py` inside a host's namespace, on the host's address."""

    def __init__(self, folder: Path, env: dict[str, str], host: Host) -> None:
        super().__init__(folder, env)
        self.host = host
        self.port = PORT
        self.base = f"http://{host.address}:{PORT}"

    @property
    def log_path(self) -> Path:
        return self.folder / f"server-{self.host.netns}.log"

    def command(self) -> list[str]:
        run = [sys.executable, "run.py", "--host", self.host.address, "--port", str(PORT)]
        return ["ip", "netns", "exec", self.host.netns, *run]


@dataclass
class Cluster:
    network: Network
    servers: list[HostServer]
    nginx: Nginx

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.nginx.https_port}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    require_root("building hosts in network namespaces")
    require_nginx()
    with Network() as network:
        hosts = [network.add_host(), network.add_host()]
        with (
            OpenMariaDB(tmp_path, network.gateway) as mariadb,
            PrivateRedis(tmp_path, network.gateway) as redis,
        ):
            env = {
                **NO_LIMITS,
                "DATABASE_URL": mariadb.url("chat"),
                "REDIS_URL": redis.url,
                "CHAT_SECRET": secrets.token_urlsafe(32),
                "CHAT_TRUSTED_PROXIES": f"{network.gateway}/32",
                "CHAT_HEARTBEAT_SECONDS": str(HEARTBEAT),
            }
            servers = [HostServer(tmp_path, env, host) for host in hosts]
            # A host that failed is tried again after 2 s (the shipped list rests it 10 s).
            nginx = Nginx(tmp_path, [f"{h.address}:{PORT}" for h in hosts], fail_timeout="2s")
            try:
                for server in servers:
                    server.start(wait=False)
                for server in servers:
                    server.wait_ready()
                nginx.start()
                yield Cluster(network, servers, nginx)
            finally:
                nginx.stop()
                for server in servers:
                    server.kill()


def _to_nginx() -> aiohttp.TCPConnector:
    """Connections to nginx's self-signed https; those cut short are aborted when the session
    closes (asyncio would otherwise leave their sockets to the garbage collector)."""
    return aiohttp.TCPConnector(limit=0, ssl=False, enable_cleanup_closed=True)


async def _open_streams(server: HostServer, http: aiohttp.ClientSession) -> float:
    async with http.get(f"{server.base}/metrics") as resp:
        match = OPEN_STREAMS.search(await resp.text())
    assert match is not None
    return float(match.group(1))


async def _post(http: aiohttp.ClientSession, url: str, text: str) -> int | None:
    """The id of a message posted at `url`, or None when there was no 201 in time."""
    body = {"chat_id": 1, "contenido": text, "username": "ana"}
    try:
        async with http.post(f"{url}/api/messages", json=body) as resp:
            return int((await resp.json())["message"]["id"]) if resp.status == 201 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


async def test_a_host_cut_off_under_load_loses_nothing_and_comes_back(cluster: Cluster) -> None:
    a, b = cluster.servers
    timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout, connector=_to_nginx()) as http,
        aiohttp.ClientSession(connector=_to_nginx()) as streams,
    ):
        # 1. Posted through one host, heard on streams held on the other (and the other way).
        on_a = Follower(streams, f"{a.base}/api/stream", {"chat_id": 1})
        on_b = Follower(streams, f"{b.base}/api/stream", {"chat_id": 1})
        await on_a.start()
        await on_b.start()
        across = [await _post(http, b.base, "de B a A"), await _post(http, a.base, "de A a B")]
        assert None not in across
        assert await on_a.wait_for(2) == across
        assert await on_b.wait_for(2) == across
        await on_a.stop()
        await on_b.stop()

        # 2. Streams through nginx, spread over both hosts, and posts through nginx.
        url = f"{cluster.url}/api/stream"
        followers = [Follower(streams, url, {"chat_id": 1}, silence=SILENCE) for _ in range(20)]
        for follower in followers:
            await follower.start()
        async with asyncio.timeout(WAIT):  # the streams of step 1 have gone
            while await _open_streams(a, http) + await _open_streams(b, http) != len(followers):  # noqa: ASYNC110 - /metrics is the only sign
                await asyncio.sleep(0.05)
        on_cut_host = await _open_streams(a, http)
        assert 0 < on_cut_host < len(followers)
        posted: list[int | None] = []
        cut = asyncio.Event()
        answered_after_cut = 0

        async def post_until_well_after_cut(poster: int) -> None:
            nonlocal answered_after_cut
            while answered_after_cut < 20:
                posted.append(await _post(http, cluster.url, f"{poster}: m{len(posted)}"))
                answered_after_cut += cut.is_set() and posted[-1] is not None
                await asyncio.sleep(0.05)

        # Three at a time: a post sent to A as its cable is cut waits for nginx's read timeout.
        posting = [asyncio.create_task(post_until_well_after_cut(n)) for n in range(3)]
        await followers[0].wait_for(20)
        a.host.cut()  # mid-load: A's streams fall silent, its posts go unanswered
        cut.set()
        await asyncio.wait_for(asyncio.gather(*posting), 6 * WAIT)
        stored = await stored_ids(streams, f"{cluster.url}/api/messages", 1)
        for follower in followers:
            await follower.wait_for(len(stored) - len(across))
        accepted = [i for i in posted if i is not None]
        assert set(accepted) <= set(stored)
        assert stored[: len(across)] == across
        for follower in followers:
            assert follower.ids == stored[len(across) :]  # every message once, in order
        assert sum(f.connects > 1 for f in followers) >= on_cut_host  # A's came back (on B)

        # 3. The cable back in: A answers again, and nginx gives it new streams.
        a.host.reconnect()
        fresh: list[Follower] = []
        async with asyncio.timeout(6 * WAIT):
            while await _open_streams(a, http) == 0:
                fresh.append(Follower(streams, url, {"chat_id": 1}, silence=SILENCE))
                await fresh[-1].start()
        last = await _post(http, cluster.url, "de vuelta")
        assert last is not None
        for follower in followers:
            assert await follower.wait_for(len(stored) - len(across) + 1) == [*stored[len(across) :], last]
        for follower in fresh:
            assert await follower.wait_for(1) == [last]
        for follower in [*followers, *fresh]:
            await follower.stop()
