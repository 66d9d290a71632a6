"""One run from start to summary, and the command line around it."""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import aiohttp
import orjson

from ..eventloop import new_event_loop
from .config import Config, LoadTestError, parse_args
from .pool import WorkerPool
from .report import RunRecord, exit_code, sample_server, summarize
from .traffic import ChatTarget, PostLog, expected_deliveries, plan_jobs, post_messages, prepare_chats
from .worker import raise_open_file_limit

POST_TIMEOUT = 30.0
PROGRESS_SECONDS = 1.0


async def run(cfg: Config, *, progress: TextIO | None = None) -> dict[str, Any]:
    """One load test against cfg.url; the summary that `python -m chat_server.loadtest` prints.

    `progress`, when given, gets a status line every second.
    """
    record = RunRecord(cfg, run_id=secrets.token_hex(4))
    record.server_before = sample_server(cfg.server_pid)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        targets = await prepare_chats(session, cfg)
        record.chats = len(targets)
        async with WorkerPool(plan_jobs(cfg, targets, record.run_id)) as pool:
            line = _progress_line(cfg, pool, record.posts)
            shown = asyncio.create_task(_show_progress(progress, line)) if progress else None
            try:
                await _measure(session, targets, pool, record)
            finally:
                if shown is not None:
                    shown.cancel()
                    await asyncio.wait([shown])
    return summarize(record)


async def _measure(
    session: aiohttp.ClientSession, targets: list[ChatTarget], pool: WorkerPool, record: RunRecord
) -> None:
    cfg = record.cfg
    record.ready = await pool.wait_ready()
    posting = sample_server(cfg.server_pid)
    await post_messages(session, cfg, targets, record.run_id, record.posts)
    record.server_posting = (posting, sample_server(cfg.server_pid))
    record.expected = expected_deliveries(record.posts.ids_by_chat, pool.connected_by_chat())
    drain_start = time.monotonic()
    try:
        async with asyncio.timeout(cfg.drain_seconds):
            await pool.wait_delivered(record.expected)
    except TimeoutError:
        record.drained = False
    record.drain_seconds = time.monotonic() - drain_start
    record.server_after = sample_server(cfg.server_pid)  # with every stream still open
    record.workers = await pool.finish(record.posts.ids_by_chat)


def _progress_line(cfg: Config, pool: WorkerPool, posts: PostLog) -> Callable[[], str]:
    def line() -> str:
        return (
            f"loadtest: streams {pool.total('connected')}/{cfg.streams} connected"
            f" ({pool.total('failed')} failed) | posted {posts.posted}/{cfg.messages}"
            f" ({posts.failed} failed) | received {pool.total('received')}"
        )

    return line


async def _show_progress(out: TextIO, line: Callable[[], str]) -> None:
    """Redraw one line in place on a terminal; elsewhere (a log) print a line each time."""
    tty = out.isatty()
    try:
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            out.write(f"\r\x1b[K{line()}" if tty else f"{line()}\n")
            out.flush()
    finally:
        if tty:
            out.write("\n")
            out.flush()


async def cli(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Parse, run, print the summary line; the exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    cfg = parse_args(argv)
    try:
        summary = await run(cfg, progress=None if cfg.json_only else err)
    except (LoadTestError, aiohttp.ClientError, OSError) as exc:
        print(f"loadtest: {exc}", file=err)
        return 2
    out.write(orjson.dumps(summary).decode() + "\n")
    out.flush()
    return exit_code(summary)


def main(argv: Sequence[str] | None = None) -> int:
    raise_open_file_limit()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(cli(argv))
