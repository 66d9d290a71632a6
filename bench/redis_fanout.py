"""What one Redis channel costs as processes are added: docs/scaling.md's per-process figures.

On a private Redis: S subscribers (each a process of the one-channel design: one here in
Python, as RedisBroker reads, the others `redis-cli`) all read one channel while a publisher
sends N announcements the size of a `done` announcement. Reports:

- the CPU one subscriber spends hearing an announcement (redis-py's PubSub.get_message and the
  JSON decode, as RedisBroker does), which every process pays for every announcement;
- Redis's own CPU per publish (INFO cpu) and the publishes/s it sustained with S subscribers.

    python bench/redis_fanout.py [--subscribers 50] [--announcements 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import Any

import redis
import redis.asyncio as aredis
from redis_ops import private_redis

from chat_server import jsonutil

CHANNEL = "bench:announcements"
ANNOUNCEMENT = {
    "type": "done",
    "token": "12345-abcdef01:42",
    "message": {
        "id": 123456,
        "chat_id": 4242,
        "sender_id": 777,
        "username": "cliente777",
        "contenido": "hola, ¿cómo estás? " * 3,
        "timestamp": "2026-12-02T05:50:00-05:00",
        "participants": [1, 777],
    },
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def subscriber(url: str, count: int, ready: asyncio.Event) -> float:
    """Read `count` announcements; the CPU seconds per announcement after the first."""
    client = aredis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    ready.set()
    heard, started = 0, 0.0
    while heard < count:
        item = await pubsub.get_message(timeout=1.0)
        if item is None:
            continue
        if heard == 0:
            started = cpu_seconds()
        jsonutil.loads(item["data"])
        heard += 1
    used = cpu_seconds() - started
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await client.aclose()
    return used / (count - 1)


def redis_cpu(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def measure(url: str, subscribers: int, count: int) -> dict[str, Any]:
    port = url.rsplit(":", 1)[1].split("/")[0]
    others = [
        await asyncio.create_subprocess_exec(
            "redis-cli", "-p", port, "subscribe", CHANNEL, stdout=asyncio.subprocess.DEVNULL
        )
        for _ in range(subscribers - 1)
    ]
    publisher = redis.Redis.from_url(url)
    try:
        ready = asyncio.Event()
        reader = asyncio.create_task(subscriber(url, count, ready))
        await ready.wait()
        # redis-cli says nothing once subscribed: Redis is asked until it counts them all.
        while publisher.pubsub_numsub(CHANNEL)[0][1] < subscribers:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        payload = jsonutil.dumps(ANNOUNCEMENT)
        cpu_before, started = redis_cpu(publisher), time.perf_counter()
        await asyncio.to_thread(publish_all, publisher, payload, count)
        wall = time.perf_counter() - started
        heard = await reader
        redis_used = redis_cpu(publisher) - cpu_before
    finally:
        for other in others:
            other.terminate()
            await other.wait()
    return {
        "subscribers": subscribers,
        "announcements": count,
        "announcement_bytes": len(payload),
        "subscriber_cpu_us_per_announcement": round(heard * 1e6, 1),
        "redis_cpu_us_per_publish": round(redis_used / count * 1e6, 2),
        "publishes_per_second": round(count / wall),
        "deliveries_per_second": round(count * subscribers / wall),
    }


def publish_all(client: redis.Redis, payload: bytes, count: int) -> None:
    """In pipelines of 50: many processes publishing at once, as one stream of commands."""
    for start in range(0, count, 50):
        with client.pipeline(transaction=False) as pipe:
            for _ in range(min(50, count - start)):
                pipe.publish(CHANNEL, payload)
            pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--announcements", type=int, default=20_000)
    args = parser.parse_args()
    with private_redis() as url:
        result = asyncio.run(measure(url, args.subscribers, args.announcements))
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
