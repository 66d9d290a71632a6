"""`python run.py --workers N`: N processes on one port, sharing their streams through Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from .chat_client import Follower
from .databases import throwaway_database
from .services import ChatServer, free_port
from .test_scale_out import shared_redis  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def workers(tmp_path: Path, shared_redis: str) -> Iterator[ChatServer]:  # noqa: F811
    with throwaway_database() as url:
        server = ChatServer(tmp_path, {"DATABASE_URL": url, "REDIS_URL": shared_redis}, "--workers", "2")
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
