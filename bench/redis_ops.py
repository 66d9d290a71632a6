"""Redis operations per stream connect, per post and per idle second, counted by Redis itself.

Starts a private Redis and a server on `--workers 2` (MariaDB, a database of its own), then runs
three phases and reads `INFO commandstats` and `INFO stats` after each (reset before each):
S per-user streams connecting, P posts into the streams' DMs (each answered 201 and delivered),
and the streams closing. An idle phase of the same length first measures the background rate
(heartbeats, presence and slot refreshes), which is subtracted from the other phases.

    python bench/redis_ops.py [--streams 200] [--posts 200] [--mysql mysql://root@127.0.0.1:3306]

Prints one JSON object: per phase, the commands per connect / post / disconnect by name, the
round trips (socket reads Redis processed), connections opened, and the bytes Redis received
and sent per operation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pymysql
import redis
from benchmarks import ARTIFACTS, ROOT, free_port, server

sys.path.insert(0, str(ROOT))  # the counters are the tests' own (tests/redis_counts.py)
from tests.redis_counts import Reading, RedisCounts

IDLE_SECONDS = 3.0


@contextmanager
def private_redis() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # a starting server has nothing to wait on but its port
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def per_operation(phase: Reading, idle: Reading, count: int) -> dict[str, Any]:
    """A phase's counts less the idle rate over its length, per operation."""
    scale = phase.seconds / idle.seconds

    def net(value: float, background: float) -> float:
        return round(max(0.0, value - background * scale) / count, 2)

    calls = {
        name: net(n, idle.calls.get(name, 0))
        for name, n in sorted(phase.calls.items())
        if net(n, idle.calls.get(name, 0)) > 0
    }
    return {
        "commands": calls,
        "total": round(sum(calls.values()), 2),
        "round_trips": net(phase.round_trips, idle.round_trips),
        "connections_opened": net(phase.connections, idle.connections),
        "in_bytes": net(phase.in_bytes, idle.in_bytes),
        "out_bytes": net(phase.out_bytes, idle.out_bytes),
    }


async def drive(base: str, counter: RedisCounts, streams: int, posts: int) -> dict[str, Any]:
    names = [f"cliente{i}" for i in range(streams)]
    unlimited = aiohttp.TCPConnector(limit=0)  # one connection per open stream, and more to post
    async with aiohttp.ClientSession(base, connector=unlimited) as session:
        chat_of: dict[str, int] = {}
        for name in names:
            async with session.post("/api/login", json={"username": name}) as resp:
                assert resp.status in (200, 201), await resp.text()
            async with session.get("/api/chats", params={"username": name}) as resp:
                chats = (await resp.json())["chats"]
                chat_of[name] = next(c["id"] for c in chats if c["type"] == "dm")

        counter.reset()
        await asyncio.sleep(IDLE_SECONDS)  # nothing happens: the background rate
        idle = counter.read()

        counter.reset()
        opened = []
        for name in names:
            resp = await session.get("/api/stream", params={"username": name})
            assert resp.status == 200, await resp.text()
            await resp.content.readuntil(b"\n\n")  # the preamble: the stream is set up
            opened.append(resp)
        connect = counter.read()

        counter.reset()
        for i in range(posts):
            name = names[i % streams]
            body = {"chat_id": chat_of[name], "contenido": f"hola {i}", "username": name}
            async with session.post("/api/messages", json=body) as resp:
                assert resp.status == 201, await resp.text()
        for resp in opened[: min(posts, streams)]:  # the posts reached their streams
            while b"event: message" not in await resp.content.readuntil(b"\n\n"):
                pass
        post = counter.read()

        counter.reset()
        for resp in opened:
            resp.close()
        await asyncio.sleep(1.0)  # closing has no answer to wait for: give the server a moment
        close = counter.read()
    return {
        "idle_per_second": {k: round(v / idle.seconds, 2) for k, v in sorted(idle.calls.items())},
        "per_connect": per_operation(connect, idle, streams),
        "per_post": per_operation(post, idle, posts),
        "per_disconnect": per_operation(close, idle, streams),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--mysql", default="mysql://root@127.0.0.1:3306")
    args = parser.parse_args()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    database = f"chat_bench_redis_ops_{free_port()}"
    try:
        with private_redis() as redis_url, server(f"{args.mysql}/{database}", 2, redis_url) as (base, _):
            result = asyncio.run(drive(base, RedisCounts(redis_url), args.streams, args.posts))
    finally:
        conn = pymysql.connect(host="127.0.0.1", user="root")
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {database}")
        conn.close()
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
