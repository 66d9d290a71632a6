"""What a process pays to hear the announcements of messages it has no stream for.

On the one Redis channel every process hears every message of every chat (docs/scaling.md,
section 2). This starts one server process (`run.py` with REDIS_URL, MariaDB, a database of its
own, no stream open) and publishes well-formed message announcements on its channel at a given
rate, as other processes storing messages would; the process's CPU over each phase, less its
idle CPU over as long, divided by the announcements, is what hearing one costs it. The process's
released-message counter (`/metrics`) must grow by exactly what was published.

    python bench/hearing.py [--rates 500 5000] [--seconds 10]

Prints one JSON object per rate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.request
from datetime import UTC, datetime

import pymysql
import redis
from benchmarks import ARTIFACTS, ROOT, server

sys.path.insert(0, str(ROOT))
from chat_server.broker import channel_for

TICK = 0.01  # publishes go out in a pipeline every 10 ms
DATABASE = "chat_bench_hearing"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def released(base: str) -> int:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(r"^chat_messages_published_total (\S+)$", text, re.M)
    assert match, "no chat_messages_published_total in /metrics"
    return int(float(match.group(1)))


def announcement(message_id: int) -> bytes:
    """What RedisBroker.message_stored publishes for a DM message of another process."""
    message = {
        "id": message_id,
        "chat_id": 1_000_000 + message_id % 5000,  # DMs nobody here follows
        "sender_id": 2,
        "username": "lt_1",
        "contenido": f"lt:bench:{message_id}:{time.time_ns()}",
        "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
        "members": [1, 2],
    }
    event = {"type": "done", "token": f"bench-elsewhere:{message_id}", "message": message}
    return json.dumps(event, separators=(",", ":")).encode()


def publish(client: redis.Redis, channel: str, first_id: int, rate: int, seconds: float) -> int:
    """Announce ids first_id, first_id + 1, ... at `rate` per second; how many were sent."""
    sent, start = 0, time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate) - sent
        if due > 0:
            pipe = client.pipeline(transaction=False)
            for n in range(due):
                pipe.publish(channel, announcement(first_id + sent + n))
            pipe.execute()
            sent += due
        time.sleep(TICK)
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--mysql", default=os.environ.get("CHAT_BENCH_MYSQL", "mysql://root@127.0.0.1:3306"))
    parser.add_argument("--redis", default=os.environ.get("CHAT_BENCH_REDIS", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # A fresh database: the announced ids are above anything stored, and nothing else posts.
    host = args.mysql.split("//", 1)[1].split("@")[-1]
    conn = pymysql.connect(host=host.split(":")[0], port=int(host.split(":")[1]), user="root")
    conn.cursor().execute(f"DROP DATABASE IF EXISTS {DATABASE}")
    conn.close()
    database_url = f"{args.mysql}/{DATABASE}"
    client = redis.Redis.from_url(args.redis)
    with server(database_url, 1, args.redis, redis=True) as (base, pid):
        next_id = 1  # a fresh database: the process's watermark is 0
        c0 = cpu_seconds(pid)
        time.sleep(args.seconds)  # the idle phase: heartbeats, refreshes
        idle = cpu_seconds(pid) - c0
        for rate in args.rates:
            before, c0 = released(base), cpu_seconds(pid)
            sent = publish(client, channel_for(database_url), next_id, rate, args.seconds)
            deadline = time.monotonic() + 30
            while released(base) - before < sent and time.monotonic() < deadline:
                time.sleep(0.1)  # the process catches up with what was published
            used = cpu_seconds(pid) - c0
            applied = released(base) - before
            next_id += sent
            print(
                json.dumps(
                    {
                        "rate": rate,
                        "announcements": sent,
                        "applied": applied,
                        "cpu_us_per_announcement": round((used - idle) / sent * 1e6, 1),
                        "cpu_percent_of_a_core": round(100 * (used - idle) / args.seconds, 1),
                        "idle_cpu_percent": round(100 * idle / args.seconds, 1),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
