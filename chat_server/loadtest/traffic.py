"""The traffic through the real HTTP API: the chats, the streams' plan, and the posts."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from .config import Config, LoadTestError, keep_error
from .protocol import StreamSpec, WorkerJob
from .wire import tag

# Setup requests (logins, DMs) in flight at once.
SETUP_CONCURRENCY = 32
ADMIN = "admin"


@dataclass(frozen=True)
class ChatTarget:
    chat_id: int
    poster: str  # who posts to it
    readers: tuple[str | None, ...]  # whom its streams identify as, in turn


async def call_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    params: dict[str, str] | None = None,
) -> Any:
    data = None if body is None else orjson.dumps(body)
    headers = {"Content-Type": "application/json"} if data is not None else {}
    async with session.request(method, url, data=data, headers=headers, params=params) as response:
        raw = await response.read()
        if response.status >= 300:
            text = raw[:200].decode(errors="replace")
            raise LoadTestError(f"{method} {url}: HTTP {response.status}: {text}")
        return orjson.loads(raw)


async def prepare_chats(session: aiohttp.ClientSession, cfg: Config) -> list[ChatTarget]:
    """K=1: General. K>1: the DMs of users <prefix>0..K-1 with admin, made on their first login."""
    if cfg.chats == 1:
        return [await general_chat(session, cfg.base, f"{cfg.user_prefix}0")]
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def one(i: int) -> ChatTarget:
        async with gate:
            return await dm_chat(session, cfg.base, f"{cfg.user_prefix}{i}")

    return list(await asyncio.gather(*(one(i) for i in range(cfg.chats))))


async def general_chat(session: aiohttp.ClientSession, base: str, username: str) -> ChatTarget:
    await call_json(session, "POST", f"{base}/api/login", {"username": username})
    body = await call_json(session, "GET", f"{base}/api/chats", params={"username": username})
    general = next((c for c in body["chats"] if c["type"] == "general"), None)
    if general is None:
        raise LoadTestError("no General chat in GET /api/chats")
    return ChatTarget(int(general["id"]), poster=username, readers=(None,))


async def dm_chat(session: aiohttp.ClientSession, base: str, username: str) -> ChatTarget:
    await call_json(session, "POST", f"{base}/api/login", {"username": username})
    body = await call_json(
        session, "POST", f"{base}/api/chats/dm", {"username": username, "with_username": ADMIN}
    )
    return ChatTarget(int(body["chat"]["id"]), poster=username, readers=(username, ADMIN))


def plan_jobs(cfg: Config, targets: list[ChatTarget], run_id: str) -> list[WorkerJob]:
    """Stream i follows chat i mod K; streams are dealt to the processes in turn."""
    specs: list[list[StreamSpec]] = [[] for _ in range(cfg.processes)]
    urls = [f"{base}/api/stream" for base in cfg.stream_bases]
    sources = cfg.source_addresses or (None,)
    for i in range(cfg.streams):
        target = targets[i % len(targets)]
        reader = target.readers[(i // len(targets)) % len(target.readers)]
        source = sources[i % len(sources)]
        specs[i % cfg.processes].append(StreamSpec(urls[i % len(urls)], target.chat_id, reader, source))
    batch = max(1, cfg.ramp_batch // cfg.processes)
    return [
        WorkerJob(n, streams, run_id, batch, cfg.connect_timeout, cfg.drop_every, cfg.resume)
        for n, streams in enumerate(specs)
    ]


@dataclass
class PostLog:
    ids_by_chat: dict[int, list[int]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    started_ns: int = 0
    finished_ns: int = 0

    @property
    def posted(self) -> int:
        return len(self.latencies_ms)

    def add(self, chat_id: int, message_id: int, latency_ms: float) -> None:
        self.ids_by_chat.setdefault(chat_id, []).append(message_id)
        self.latencies_ms.append(latency_ms)

    def fail(self, error: str) -> None:
        self.failed += 1
        keep_error(self.errors, error)


async def post_messages(
    session: aiohttp.ClientSession, cfg: Config, targets: list[ChatTarget], run_id: str, log: PostLog
) -> None:
    """Start post number n at n/rate seconds, round-robin over the chats, with at most
    post_concurrency in flight (beyond that, posting falls behind the rate)."""
    gate = asyncio.Semaphore(cfg.post_concurrency)
    url = f"{cfg.base}/api/messages"
    start = time.monotonic()
    log.started_ns = time.time_ns()
    async with asyncio.TaskGroup() as tasks:
        for seq in range(cfg.messages):
            await asyncio.sleep(max(0.0, start + seq / cfg.rate - time.monotonic()))
            await gate.acquire()
            task = tasks.create_task(post_one(session, url, targets[seq % len(targets)], run_id, seq, log))
            task.add_done_callback(lambda _: gate.release())
    log.finished_ns = time.time_ns()


async def post_one(
    session: aiohttp.ClientSession, url: str, target: ChatTarget, run_id: str, seq: int, log: PostLog
) -> None:
    sent_ns = time.time_ns()
    body = {"chat_id": target.chat_id, "contenido": tag(run_id, seq, sent_ns), "username": target.poster}
    try:
        reply = await call_json(session, "POST", url, body)
        message_id = int(reply["message"]["id"])
    except (LoadTestError, aiohttp.ClientError, OSError, ValueError, KeyError, TypeError) as exc:
        log.fail(f"{type(exc).__name__}: {exc}")
        return
    log.add(target.chat_id, message_id, (time.time_ns() - sent_ns) / 1e6)


def expected_deliveries(ids_by_chat: dict[int, list[int]], streams_by_chat: dict[int, int]) -> int:
    """Each message once on every connected stream of its chat."""
    return sum(len(ids) * streams_by_chat.get(chat, 0) for chat, ids in ids_by_chat.items())
