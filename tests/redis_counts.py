"""Redis's own counters of what its clients asked (INFO commandstats and stats), since a reset:
for tests/test_redis_ops.py and bench/redis_ops.py."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

# What a client says on a new connection: connections are counted on their own.
CONNECTING = ("hello", "client|setinfo")


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
