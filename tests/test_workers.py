"""`python run.py --workers N`: N processes on one port, sharing their streams through Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from .chat_client import Follower
from .databases import throwaway_database
from .services import free_port
from .test_scale_out import shared_redis  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def workers(tmp_path: Path, shared_redis: str) -> Iterator[str]:  # noqa: F811
    with throwaway_database() as url:
        port = free_port()
        env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": shared_redis}
        with (tmp_path / "server.log").open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "run.py", "--workers", "2", "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=30) == 0


async def _wait_ready(session: aiohttp.ClientSession, base: str) -> int:
    """The pid of the process that answered /healthz, once one does."""
    async with asyncio.timeout(60):
        while True:
            try:
                async with session.get(f"{base}/healthz", headers={"Connection": "close"}) as resp:
                    if resp.status == 200:
                        pid: int = (await resp.json())["pid"]
                        return pid
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)  # still starting: nothing to wait on but the port


async def _worker_pids(session: aiohttp.ClientSession, base: str) -> set[int]:
    """Ask /healthz on fresh connections until both workers have answered."""
    pids: set[int] = set()
    while len(pids) < 2:
        pids.add(await _wait_ready(session, base))
    return pids


async def test_two_workers_share_one_port_and_deliver_across(workers: str) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
        assert len(await _worker_pids(session, workers)) == 2
        followers = [Follower(session, f"{workers}/api/stream", {"chat_id": 1}) for _ in range(20)]
        for follower in followers:
            await follower.start()
        ids = []
        for i in range(5):
            body = {"chat_id": 1, "contenido": f"m{i}", "username": "ana"}
            async with session.post(f"{workers}/api/messages", json=body) as resp:
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
