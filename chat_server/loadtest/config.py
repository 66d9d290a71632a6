"""What a run is asked to do (the command line, as a Config), and errors shared by its parts."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# One process reads at most this many streams, and gets a CPU of its own up to one per
# STREAMS_PER_CPU streams: parsing the fan-out must not be what limits the measurement.
MAX_STREAMS_PER_PROCESS = 5000
STREAMS_PER_CPU = 1000
# Error messages kept for the summary, per source.
KEPT_ERRORS = 10


def keep_error(errors: list[str], message: str) -> None:
    """Add `message` to the few distinct ones a summary shows."""
    if len(errors) < KEPT_ERRORS and message not in errors:
        errors.append(message)


# A load test is one address and a few users doing what thousands of people do: a server under
# test runs with its rate limits and stream cap off (these settings, in its environment).
NO_LIMITS = {
    "CHAT_POST_LIMIT_USER": "0",
    "CHAT_POST_LIMIT_ADDRESS": "0",
    "CHAT_LOGIN_LIMIT_USER": "0",
    "CHAT_LOGIN_LIMIT_ADDRESS": "0",
    "CHAT_MAX_STREAMS_PER_USER": "0",
    "CHAT_MAX_STREAMS_PER_ADDRESS": "0",
    "CHAT_SIGNUP_LIMIT_ADDRESS": "0",
}


class LoadTestError(Exception):
    """The run could not be made (setup refused, a worker died): there is no summary."""


@dataclass(frozen=True)
class Config:
    url: str
    streams: int
    chats: int = 1
    messages: int = 100
    rate: float = 10.0
    processes: int = 1
    server_pid: int | None = None
    json_only: bool = False
    ramp_batch: int = 500
    post_concurrency: int = 64
    drain_seconds: float = 10.0
    connect_timeout: float = 30.0
    # Self-test of the accounting: each worker discards every Nth delivery it receives.
    drop_every: int = 0
    user_prefix: str = "lt_"
    # Streams are spread over these servers (default: url), e.g. several processes of one cluster.
    stream_urls: tuple[str, ...] = ()
    # Like EventSource: a stream that ends or breaks reconnects with Last-Event-ID.
    resume: bool = False
    # Local addresses the streams connect from, in turn (default: the system's choice). One
    # address reaches one server port through at most ~28,000 ephemeral ports.
    source_addresses: tuple[str, ...] = ()

    @property
    def stream_bases(self) -> tuple[str, ...]:
        return tuple(u.rstrip("/") for u in self.stream_urls) or (self.base,)

    @property
    def base(self) -> str:
        return self.url.rstrip("/")


def default_processes(streams: int, cpus: int) -> int:
    return max(math.ceil(streams / MAX_STREAMS_PER_PROCESS), min(cpus, math.ceil(streams / STREAMS_PER_CPU)))


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="python -m chat_server.loadtest",
        description="Open many SSE streams, post messages at a rate, report delivery and latency.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8080", help="base URL of the chat server")
    p.add_argument("--streams", type=_positive(int), default=100, help="SSE streams to open")
    p.add_argument("--chats", type=_positive(int), default=1, help="1: General; K>1: K DMs lt_<i>/admin")
    p.add_argument("--messages", type=_positive(int, zero=True), default=100, help="messages to post")
    p.add_argument("--rate", type=_positive(float), default=10.0, help="messages per second")
    p.add_argument(
        "--processes",
        type=_positive(int),
        help=f"stream-reading processes (default: one per {STREAMS_PER_CPU} streams up to the CPUs,"
        f" and at least one per {MAX_STREAMS_PER_PROCESS})",
    )
    p.add_argument("--server-pid", type=int, help="read the server's RSS and CPU from /proc/PID")
    p.add_argument("--json-only", action="store_true", help="no progress line on stderr")
    p.add_argument("--ramp-batch", type=_positive(int), default=500, help="streams connecting at once")
    p.add_argument("--post-concurrency", type=_positive(int), default=64, help="posts in flight at most")
    p.add_argument(
        "--drain-seconds",
        type=_positive(float, zero=True),
        default=10.0,
        help="after the last post, how long to wait for deliveries before counting them lost",
    )
    p.add_argument("--connect-timeout", type=_positive(float), default=30.0, help="per stream, seconds")
    p.add_argument(
        "--drop-every",
        type=_positive(int, zero=True),
        default=0,
        help="self-test: each process discards every Nth delivery, which must show as lost",
    )
    p.add_argument("--user-prefix", default="lt_", help="usernames of the DM users: <prefix><i>")
    p.add_argument(
        "--stream-url",
        action="append",
        default=[],
        help="open the streams on this server instead of --url (repeat to spread them over several)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reconnect a stream that ends or breaks with Last-Event-ID, as EventSource does",
    )
    p.add_argument(
        "--source-addresses",
        type=_source_addresses,
        default=(),
        help="connect the streams from these local addresses in turn: a comma-separated list, or"
        " N for 127.0.0.1 ... 127.0.0.N (each address has ~28,000 ephemeral ports to one server)",
    )
    args = p.parse_args(argv)
    processes = args.processes or default_processes(args.streams, os.cpu_count() or 1)
    return Config(
        url=args.url,
        streams=args.streams,
        chats=args.chats,
        messages=args.messages,
        rate=args.rate,
        processes=min(processes, args.streams),
        server_pid=args.server_pid,
        json_only=args.json_only,
        ramp_batch=args.ramp_batch,
        post_concurrency=args.post_concurrency,
        drain_seconds=args.drain_seconds,
        connect_timeout=args.connect_timeout,
        drop_every=args.drop_every,
        user_prefix=args.user_prefix,
        stream_urls=tuple(args.stream_url),
        resume=args.resume,
        source_addresses=args.source_addresses,
    )


def _source_addresses(raw: str) -> tuple[str, ...]:
    if raw.isdigit():
        count = int(raw)
        if not 1 <= count <= 254:
            raise argparse.ArgumentTypeError(f"a count of loopback addresses is 1 to 254: {raw}")
        return tuple(f"127.0.0.{i}" for i in range(1, count + 1))
    addresses = tuple(a.strip() for a in raw.split(",") if a.strip())
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an IP address: {address}") from None
    if not addresses:
        raise argparse.ArgumentTypeError("no address given")
    return addresses


def _positive(kind: Callable[[str], float], *, zero: bool = False) -> Callable[[str], Any]:
    def convert(raw: str) -> float:
        value = kind(raw)
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if zero else '> 0'}: {raw}")
        return value

    return convert
