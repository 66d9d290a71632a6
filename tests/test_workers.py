"""`python run.py --workers N`: N processes on one port, sharing their streams through Redis."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from chat_server.loadtest import NO_LIMITS
from chat_server.server import LISTEN_BACKLOG
from chat_server.supervisor import Backoff

from .chat_client import Follower, stored_ids
from .databases import throwaway_database
from .services import ChatServer, free_port
from .test_scale_out import shared_redis  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parent.parent
CRASH = (
    r"worker (?P<slot>\d+) pid (?P<pid>\d+) exited with (?P<code>-?\d+) after [\d.]+ s;"
    r" restart (?P<restart>\d+) in (?P<delay>[\d.]+) s"
)
SUPERVISOR_EVENT = re.compile(r"worker (\d+) pid (\d+) (started|ready|stopping|stopped)")
ROLL_PIDS = re.compile(r"rolling restart: (?:begin|done) \(pids \[([\d, ]+)\]\)")
# Attempts at a post whose connection breaks before an answer (a worker stopping as it arrives).
RETRIES = 5


@pytest.fixture
def workers(tmp_path: Path, shared_redis: str) -> Iterator[ChatServer]:  # noqa: F811
    with throwaway_database() as url:
        env = {"DATABASE_URL": url, "REDIS_URL": shared_redis, **NO_LIMITS}
        server = ChatServer(tmp_path, env, "--workers", "2")
        server.start()
        try:
            yield server
        finally:
            assert server.stop() == 0


async def test_two_workers_share_one_port_and_deliver_across(workers: ChatServer) -> None:
    pids: set[int] = set()
    while len(pids) < 2:  # fresh connections land on either worker
        pids.add(workers.wait_ready())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
        followers = [Follower(session, f"{workers.base}/api/stream", {"chat_id": 1}) for _ in range(20)]
        for follower in followers:
            await follower.start()
        ids = []
        for i in range(5):
            body = {"chat_id": 1, "contenido": f"m{i}", "username": "ana"}
            async with session.post(f"{workers.base}/api/messages", json=body) as resp:
                assert resp.status == 201
                ids.append((await resp.json())["message"]["id"])
        for follower in followers:
            assert await follower.wait_for(5) == ids
            await follower.stop()


def test_more_than_one_worker_without_redis_is_refused() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run(
        [sys.executable, "run.py", "--workers", "2", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "needs REDIS_URL" in done.stderr


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_stable_run() -> None:
    backoff = Backoff(base=0.25, cap=2.0, stable=60.0)
    assert [backoff.after_crash(uptime=1.0) for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert backoff.after_crash(uptime=60.0) == 0.25  # it had served a minute: a fresh failure
    assert backoff.after_crash(uptime=59.0) == 0.5
    assert [backoff.after_crash(uptime=0.0) for _ in range(2000)][-1] == 2.0  # no overflow


def test_a_worker_that_keeps_crashing_is_restarted_with_growing_delays(
    tmp_path: Path,
    shared_redis: str,  # noqa: F811
) -> None:
    # Its database is a file under /dev/null: every worker fails at start.
    env = {"DATABASE_URL": "sqlite:////dev/null/chat.sqlite3", "REDIS_URL": shared_redis}
    server = ChatServer(tmp_path, env, "--workers", "2")
    server.start(wait=False)
    try:
        crashes = server.wait_for_log(CRASH, count=6)
        assert server.process is not None
        assert server.process.poll() is None  # the supervisor itself keeps running
    finally:
        assert server.stop() == 0
    for slot in ("0", "1"):
        records = [m for m in crashes if m["slot"] == slot]
        assert [int(m["restart"]) for m in records] == list(range(1, len(records) + 1))
        delays = [float(m["delay"]) for m in records]
        assert delays == sorted(delays)
        assert len(delays) >= 3
        assert delays[-1] >= 4 * delays[0]
        assert all(m["code"] == "1" for m in records)
        assert len({m["pid"] for m in records}) == len(records)  # a new process each time


async def _post(session: aiohttp.ClientSession, base: str, text: str) -> int | None:
    """Post, retrying while the connection breaks before an answer (a worker stopping as it
    arrives); the id answered 201."""
    for _ in range(RETRIES):
        try:
            body = {"chat_id": 1, "contenido": text, "username": "ana"}
            async with session.post(f"{base}/api/messages", json=body) as resp:
                assert resp.status == 201, (resp.status, await resp.text())
                return int((await resp.json())["message"]["id"])
        except aiohttp.ClientConnectionError:
            continue
    return None


async def test_sighup_replaces_workers_one_at_a_time_and_streams_lose_nothing(
    workers: ChatServer,
) -> None:
    assert workers.process is not None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
        followers = [Follower(session, f"{workers.base}/api/stream", {"chat_id": 1}) for _ in range(20)]
        for follower in followers:
            await follower.start()
        posted: list[int | None] = []
        restarted = asyncio.Event()

        async def post_until_restarted() -> None:
            while not restarted.is_set() or len(posted) < 40:
                posted.append(await _post(session, workers.base, f"m{len(posted)}"))

        posting = asyncio.create_task(post_until_restarted())
        await followers[0].wait_for(5)  # posting is under way
        os.kill(workers.process.pid, signal.SIGHUP)
        await asyncio.to_thread(workers.wait_for_log, "rolling restart: done")
        restarted.set()
        await asyncio.wait_for(posting, 60)
        stored = await stored_ids(session, f"{workers.base}/api/messages", 1)
        for follower in followers:
            await follower.wait_for(len(stored))
            await follower.stop()

    accepted = [i for i in posted if i is not None]
    assert set(accepted) <= set(stored)
    assert len(stored) >= 40
    for follower in followers:
        assert follower.ids == stored  # every message once, in order, across the reconnect
        assert follower.connects >= 2  # every worker was replaced: every stream came back
    _assert_replaced_one_at_a_time(workers.log_path.read_text())


def _assert_replaced_one_at_a_time(log: str) -> None:
    """From the supervisor's records: each old worker was stopped only after its replacement said
    it was ready, and the next replacement started only after the previous old worker exited."""
    begin = log.index("rolling restart: begin")
    events = SUPERVISOR_EVENT.findall(log[begin : log.index("rolling restart: done")])
    old_pids, new_pids = (pids.split(", ") for pids in ROLL_PIDS.findall(log[begin:])[:2])
    assert not set(old_pids) & set(new_pids)
    expected: list[tuple[str, str, str]] = []
    for slot, (old, new) in enumerate(zip(old_pids, new_pids, strict=True)):
        expected += [(str(slot), new, "started"), (str(slot), new, "ready")]
        expected += [(str(slot), old, "stopping"), (str(slot), old, "stopped")]
    assert events == expected


def test_a_single_process_survives_sighup_and_says_why_it_did_not_restart(tmp_path: Path) -> None:
    server = ChatServer(tmp_path, {"DATABASE_URL": f"sqlite:///{tmp_path}/chat.sqlite3", "REDIS_URL": ""})
    server.start()
    try:
        assert server.process is not None
        pid = server.wait_ready()
        os.kill(server.process.pid, signal.SIGHUP)
        server.wait_for_log("SIGHUP ignored: a rolling restart needs --workers 2")
        assert server.wait_ready() == pid
    finally:
        assert server.stop() == 0


def test_each_worker_socket_listens_with_the_full_backlog(workers: ChatServer) -> None:
    # A reconnect storm after a deploy arrives at once; asyncio's default backlog is 128.
    listing = subprocess.run(
        ["ss", "-ltnH", f"sport = :{workers.port}"], capture_output=True, text=True, check=True
    ).stdout
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    backlogs = [int(line.split()[2]) for line in listing.splitlines()]
    assert backlogs == [min(LISTEN_BACKLOG, somaxconn)] * 2
