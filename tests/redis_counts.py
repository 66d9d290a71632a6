"""Redis's own counters of what its clients asked (INFO commandstats and stats), since a reset:
for tests/test_redis_ops.py and bench/redis_ops.py; and the transactions it ran (MONITOR)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio

from .chat_client import WAIT

# What a client says on a new connection: connections are counted on their own. (The broker's
# announcer names itself and turns replies off: chat_server/announcer.py.)
CONNECTING = ("hello", "client|setinfo", "client|setname", "client|reply")


@dataclass(frozen=True)
class Reading:
    calls: dict[str, int]  # by command, the counter's own and new connections' greetings left out
    round_trips: int  # socket reads Redis processed, likewise
    connections: int  # connections opened since Redis started
    in_bytes: int
    out_bytes: int
    seconds: float


class RedisCounts:
    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.started = time.monotonic()

    def reset(self) -> None:
        self.client.config_resetstat()
        self.started = time.monotonic()

    def read(self) -> Reading:
        stats: dict[str, Any] = self.client.info("commandstats")
        net: dict[str, Any] = self.client.info("stats")
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
        connecting = sum(calls.pop(k, 0) for k in CONNECTING)
        calls = {k: n for k, n in calls.items() if k not in ("info", "config|resetstat")}
        return Reading(
            calls=calls,
            # Less the reset and the first INFO (the second is not counted yet).
            round_trips=int(net["total_reads_processed"]) - 2 - connecting,
            connections=int(net["total_connections_received"]),
            in_bytes=int(net["total_net_input_bytes"]),
            out_bytes=int(net["total_net_output_bytes"]),
            seconds=time.monotonic() - self.started,
        )


class Watch:
    """`async with Watch(url) as seen:` every command Redis runs in the block, each a list of
    words: all of them in `seen.commands`, and those of each MULTI/EXEC in `seen.transactions`
    (complete once the block is left), with when Redis ran each EXEC (`seen.exec_times`, its
    clock's seconds). Read from MONITOR: what Redis itself received."""

    DONE = "watch-done"

    def __init__(self, url: str) -> None:
        self.client = redis.asyncio.Redis.from_url(url)
        self.commands: list[list[str]] = []
        self.transactions: list[list[list[str]]] = []
        self.exec_times: list[float] = []
        self._watching: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watch:
        watching = asyncio.Event()
        self._watching = asyncio.create_task(self._watch(watching))
        await asyncio.wait_for(watching.wait(), WAIT)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._watching is not None
        await self.client.echo(self.DONE)  # the last command the monitor reads
        try:
            await asyncio.wait_for(self._watching, WAIT)
        finally:
            await self.client.aclose()

    async def _watch(self, watching: asyncio.Event) -> None:
        open_: dict[str, list[list[str]]] = {}  # client -> its transaction so far
        async with self.client.monitor() as monitor:
            watching.set()  # MONITOR answered: every later command is seen
            async for seen in monitor.listen():
                words, client = seen["command"].split(" "), f"{seen['client_address']}:{seen['client_port']}"
                if words == ["ECHO", self.DONE]:
                    return
                self.commands.append(words)
                if words[0] == "MULTI":
                    open_[client] = []
                elif words[0] == "EXEC":
                    self.transactions.append(open_.pop(client))
                    self.exec_times.append(float(seen["time"]))
                elif client in open_:
                    open_[client].append(words)


async def scores(client: redis.asyncio.Redis, key: str) -> dict[bytes, float]:
    """A sorted set's members with their scores."""
    return dict(cast(list[tuple[bytes, float]], await client.zrange(key, 0, -1, withscores=True)))
