"""Chaos: two server processes under posting and resuming streams, with faults at seeded times.

Faults, one at a time, at seeded random moments: Redis restarted; Redis and MariaDB stalled
(connections open, silent) and reset, through TCP proxies; a server SIGKILLed (also while an
insert of its is in the database between its id and its commit, the gate of
test_ordering_faults) and started again. Posts go to both processes, the killed one included.

The verdict is the database's: once the faults stop, every stream (per chat and per user, each
resuming by Last-Event-ID like an EventSource) has exactly the ids the database holds for its
chats, in order, once; every answered post is 201 or a 503 JSON; no post waited more than 5 s.

`make test` runs a short seeded run; `make chaos` a long one. CHAOS_SEED=N reproduces a run's
fault schedule (the timing of the processes is the machine's); CHAOS_SECONDS sets its length.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pymysql
import pytest

from chat_server.loadtest import NO_LIMITS

from .chat_client import Follower
from .databases import HOST, PORT, throwaway_database
from .services import ChatServer, PrivateRedis
from .tcp_proxy import TcpProxy
from .test_ordering_faults import GATE, Gate
from .waiting import eventually

SECONDS = float(os.environ.get("CHAOS_SECONDS", "25"))
SEED = os.environ.get("CHAOS_SEED", "11")
POSTERS = 4
POST_BOUND = 5.0  # no post may wait longer than this
RUN_GRACE = 150.0  # setup, healing and the verdict, beyond the faults' own SECONDS
SETTLE = 60.0  # after the faults, how long the streams get to receive everything
USERS = ("ana", "beto")


@dataclass
class Tally:
    faults: Counter[str] = field(default_factory=Counter)
    accepted: list[int] = field(default_factory=list)
    refused: int = 0  # 503 JSON
    unanswered: int = 0  # the process was killed under the request
    wrong: list[str] = field(default_factory=list)  # anything else: a verdict failure
    slowest: float = 0.0


@dataclass
class Cluster:
    servers: list[ChatServer]
    redis: PrivateRedis
    redis_proxy: TcpProxy
    db_proxy: TcpProxy
    gate: Gate
    database: str


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    with throwaway_database() as url, PrivateRedis(tmp_path) as redis:
        async with TcpProxy(PORT) as db_proxy, TcpProxy(redis.port) as redis_proxy:
            env = {
                "DATABASE_URL": url.replace(f":{PORT}/", f":{db_proxy.port}/"),
                "REDIS_URL": f"redis://127.0.0.1:{redis_proxy.port}/0",
                **NO_LIMITS,
            }
            servers = [ChatServer(tmp_path, env) for _ in range(2)]
            database = url.rsplit("/", 1)[-1]
            gate = Gate(database)
            try:
                # The schema first, then the gate's trigger while nothing else runs, then traffic.
                # (Blocking calls in threads: the proxies run on this event loop.)
                await asyncio.to_thread(servers[0].start)
                await asyncio.to_thread(servers[0].stop)
                gate.install()
                for server in servers:
                    await asyncio.to_thread(server.start)
                yield Cluster(servers, redis, redis_proxy, db_proxy, gate, database)
            finally:
                gate.open()
                gate.shut()
                for server in servers:
                    await asyncio.to_thread(server.stop)


async def test_chaos_loses_duplicates_and_reorders_nothing(cluster: Cluster) -> None:
    seed = int(SEED) if SEED != "random" else random.randrange(1_000_000)
    rng = random.Random(seed)
    tally = Tally()
    # A fault that wedges the run fails it here, rather than holding the suite (and CI) forever.
    async with asyncio.timeout(SECONDS + RUN_GRACE):
        verdict = await _run(cluster, rng, tally)
    line = (
        f"chaos seed={seed} seconds={SECONDS:.0f} faults={dict(sorted(tally.faults.items()))} "
        f"accepted={len(tally.accepted)} refused_503={tally.refused} unanswered={tally.unanswered} "
        f"stored={verdict['stored']} deliveries={verdict['deliveries']} lost={verdict['lost']} "
        f"duplicated={verdict['duplicated']} out_of_order={verdict['out_of_order']} "
        f"slowest_post={tally.slowest:.2f}s"
    )
    print(line)
    assert tally.wrong == [], line
    assert set(tally.accepted) <= verdict["stored_ids"], line
    assert verdict["lost"] == verdict["duplicated"] == verdict["out_of_order"] == 0, line
    assert tally.slowest <= POST_BOUND, line


async def _run(cluster: Cluster, rng: random.Random, tally: Tally) -> dict[str, Any]:
    """Traffic and faults for SECONDS, then the verdict against the database."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
        chats = await _prepare(session, cluster)
        followers = await _follow(session, cluster, chats)
        stop = asyncio.Event()
        posters = [
            asyncio.create_task(_post_until(stop, session, cluster, chats, rng.random(), tally))
            for _ in range(POSTERS)
        ]
        started = time.monotonic()
        try:
            while time.monotonic() - started < SECONDS:
                await asyncio.sleep(rng.uniform(0.5, 2.0))  # the quiet between two faults
                await _inject(rng, session, cluster, chats, tally)
        finally:
            stop.set()
            await asyncio.gather(*posters)
            await _heal(cluster)
        verdict = await _verdict(cluster, chats, followers)
        for follower, _ in followers:
            await follower.stop()
    return verdict


# -- the traffic -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chats:
    general: int
    dms: dict[str, int]  # user -> their DM with admin


async def _prepare(session: aiohttp.ClientSession, cluster: Cluster) -> Chats:
    base = cluster.servers[0].base
    dms = {}
    for user in USERS:
        await _call(session, "POST", f"{base}/api/login", json={"username": user})
        body = await _call(
            session, "POST", f"{base}/api/chats/dm", json={"username": user, "with_username": "admin"}
        )
        dms[user] = int(body["chat"]["id"])
    body = await _call(session, "GET", f"{base}/api/chats", params={"username": USERS[0]})
    general = next(int(c["id"]) for c in body["chats"] if c["type"] == "general")
    return Chats(general, dms)


async def _call(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Any:
    async with session.request(method, url, **kwargs) as resp:
        assert resp.status < 300, (url, resp.status, await resp.text())
        return await resp.json()


async def _follow(
    session: aiohttp.ClientSession, cluster: Cluster, chats: Chats
) -> list[tuple[Follower, set[int]]]:
    """Per-chat General streams and every user's per-user stream, on each server."""
    plan: list[tuple[dict[str, Any], set[int]]] = [({"chat_id": chats.general}, {chats.general})]
    for user, dm in chats.dms.items():
        plan.append(({"username": user}, {chats.general, dm}))
        plan.append(({"chat_id": dm, "username": user}, {dm}))
    plan.append(({"username": "admin"}, {chats.general, *chats.dms.values()}))
    followers = []
    for server in cluster.servers:
        for params, chat_ids in plan:
            follower = Follower(session, f"{server.base}/api/stream", {**params, "last_event_id": 0})
            await follower.start()
            followers.append((follower, chat_ids))
    return followers


async def _post_until(
    stop: asyncio.Event,
    session: aiohttp.ClientSession,
    cluster: Cluster,
    chats: Chats,
    seed: float,
    tally: Tally,
) -> None:
    rng = random.Random(seed)
    n = 0
    while not stop.is_set():
        user = rng.choice(USERS)
        chat_id = rng.choice([chats.general, chats.dms[user]])
        server = rng.choice(cluster.servers)
        await _post(session, server, chat_id, user, f"m{n}", tally)
        n += 1
        await asyncio.sleep(rng.uniform(0.0, 0.05))


async def _post(
    session: aiohttp.ClientSession, server: ChatServer, chat_id: int, user: str, text: str, tally: Tally
) -> None:
    began = time.monotonic()
    body = {"chat_id": chat_id, "contenido": text, "username": user}
    try:
        async with session.post(f"{server.base}/api/messages", json=body) as resp:
            answer = await resp.json(content_type=None)
            status = resp.status
    except (aiohttp.ClientError, ConnectionError):
        tally.unanswered += 1  # killed (or not up yet): no answer, nothing promised
        return
    waited = time.monotonic() - began
    tally.slowest = max(tally.slowest, waited)
    if status == 201:
        tally.accepted.append(int(answer["message"]["id"]))
    elif status == 503 and isinstance(answer, dict) and "error" in answer:
        tally.refused += 1
    else:
        tally.wrong.append(f"{status} {answer!r:.200}")


# -- the faults --------------------------------------------------------------------------------


async def _inject(
    rng: random.Random, session: aiohttp.ClientSession, cluster: Cluster, chats: Chats, tally: Tally
) -> None:
    faults: dict[str, Callable[[], Awaitable[None]]] = {
        "redis_restart": lambda: _redis_restart(cluster, rng.uniform(0.3, 2.0)),
        "redis_stall": lambda: _stall(cluster.redis_proxy, rng.uniform(0.3, 2.0)),
        "redis_reset": lambda: _reset(cluster.redis_proxy),
        "db_stall": lambda: _stall(cluster.db_proxy, rng.uniform(0.3, 2.0)),
        "db_reset": lambda: _reset(cluster.db_proxy),
        "sigkill": lambda: _sigkill(rng.choice(cluster.servers)),
        "sigkill_mid_insert": lambda: _sigkill_mid_insert(session, cluster, chats, rng, tally),
        "slow_commit": lambda: _slow_commit(session, cluster, chats, rng, tally, redis_down=False),
        "slow_commit_redis_down": lambda: _slow_commit(session, cluster, chats, rng, tally, redis_down=True),
    }
    name = rng.choice(sorted(faults))
    tally.faults[name] += 1
    await faults[name]()


async def _redis_restart(cluster: Cluster, down: float) -> None:
    await asyncio.to_thread(cluster.redis.stop)
    await asyncio.sleep(down)  # how long the fault lasts
    await asyncio.to_thread(cluster.redis.start)


async def _stall(proxy: TcpProxy, seconds: float) -> None:
    proxy.stall()
    await asyncio.sleep(seconds)  # how long the fault lasts
    proxy.resume()


async def _reset(proxy: TcpProxy) -> None:
    proxy.reset()


async def _sigkill(server: ChatServer) -> None:
    server.kill()
    await asyncio.to_thread(server.start)


async def _sigkill_mid_insert(
    session: aiohttp.ClientSession, cluster: Cluster, chats: Chats, rng: random.Random, tally: Tally
) -> None:
    """Kill a process while its insert has its id and has not committed; the server commits it
    after (the process's client is gone, the statement is not): a message nobody was told of."""
    victim = rng.choice(cluster.servers)
    cluster.gate.close()
    post = asyncio.create_task(_post(session, victim, chats.general, USERS[0], f"{GATE} m", tally))
    try:
        await eventually(cluster.gate.holding, "the insert waits at the gate")
    finally:
        victim.kill()
        cluster.gate.open()
        await post
    await asyncio.to_thread(victim.start)


async def _slow_commit(
    session: aiohttp.ClientSession,
    cluster: Cluster,
    chats: Chats,
    rng: random.Random,
    tally: Tally,
    *,
    redis_down: bool,
) -> None:
    """An insert that holds its id for seconds while others commit after it (its post may
    answer 503 meanwhile, and the row commits all the same): with Redis up, or down until after
    it commits."""
    if redis_down:
        await asyncio.to_thread(cluster.redis.stop)
    cluster.gate.close()
    post = asyncio.create_task(
        _post(session, rng.choice(cluster.servers), chats.general, USERS[1], f"{GATE} s", tally)
    )
    try:
        await eventually(cluster.gate.holding, "the insert waits at the gate")
        await asyncio.sleep(rng.uniform(1.2, 3.0))  # how long the insert stays open
    finally:
        cluster.gate.open()
        await post
        if redis_down:
            await asyncio.to_thread(cluster.redis.start)


async def _heal(cluster: Cluster) -> None:
    cluster.db_proxy.resume()
    cluster.redis_proxy.resume()
    cluster.gate.open()
    if cluster.redis.process is None or cluster.redis.process.poll() is not None:
        await asyncio.to_thread(cluster.redis.start)


# -- the verdict -------------------------------------------------------------------------------


def _stored(database: str) -> dict[int, list[int]]:
    """Every message id the database holds, by chat, in id order."""
    conn = pymysql.connect(host=HOST, port=PORT, user="root", database=database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT chat_id, id FROM mensajes_v2 WHERE id > 0 ORDER BY id")
            rows = cur.fetchall()
    finally:
        conn.close()
    by_chat: dict[int, list[int]] = {}
    for chat_id, message_id in rows:
        by_chat.setdefault(int(chat_id), []).append(int(message_id))
    return by_chat


async def _verdict(
    cluster: Cluster, chats: Chats, followers: list[tuple[Follower, set[int]]]
) -> dict[str, Any]:
    stored: dict[int, list[int]] = {}
    while stored != (now := _stored(cluster.database)):  # an insert cut off may commit late
        stored = now
        waits = [f.wait_for(sum(len(stored.get(c, [])) for c in chat_ids)) for f, chat_ids in followers]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE):
                await asyncio.gather(*waits, return_exceptions=True)  # a stream short of some: counted below
    lost = duplicated = out_of_order = deliveries = 0
    for follower, chat_ids in followers:
        expected = sorted(i for c in chat_ids for i in stored.get(c, []))
        got = list(follower.ids)
        deliveries += len(got)
        lost += len(set(expected) - set(got))
        duplicated += len(got) - len(set(got))
        out_of_order += sum(1 for a, b in itertools.pairwise(got) if b <= a)
    ids = {i for chat in stored.values() for i in chat}
    return {
        "stored": len(ids),
        "stored_ids": ids,
        "deliveries": deliveries,
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order": out_of_order,
    }
