"""SIGKILL of one of two processes under load, and its restart: every client resumes by
Last-Event-ID and gets every accepted message exactly once (driven by the load tool)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat_server.loadtest import NO_LIMITS

from .databases import throwaway_database
from .services import ChatServer
from .test_scale_out import shared_redis  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parent.parent
POSTED = re.compile(rb"posted (\d+)/")


@pytest.fixture
def cluster(tmp_path: Path, shared_redis: str) -> Iterator[tuple[ChatServer, ChatServer]]:  # noqa: F811
    with throwaway_database() as url:
        env = {"DATABASE_URL": url, "REDIS_URL": shared_redis, **NO_LIMITS}
        survivor, victim = ChatServer(tmp_path, env), ChatServer(tmp_path, env)
        survivor.start()
        victim.start()
        try:
            yield survivor, victim
        finally:
            victim.stop()
            survivor.stop()


async def test_sigkill_and_restart_under_load_loses_and_duplicates_nothing(
    cluster: tuple[ChatServer, ChatServer],
) -> None:
    survivor, victim = cluster
    tool = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chat_server.loadtest",
        "--url", survivor.base,
        "--stream-url", survivor.base, "--stream-url", victim.base,
        "--streams", "1000", "--chats", "1", "--messages", "400", "--rate", "40",
        "--processes", "1", "--resume", "--drain-seconds", "30",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert tool.stdout is not None
    assert tool.stderr is not None
    killed = False
    async with asyncio.timeout(180):
        async for line in tool.stderr:
            posted = POSTED.search(line)
            if not killed and posted and int(posted.group(1)) >= 100:
                victim.kill()
                killed = True
                victim.start()
        out = await tool.stdout.read()
        code = await tool.wait()
    assert killed, "the load never reached the kill point"
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["posts_failed"] == 0, summary["errors"]
    assert summary["streams_connected"] == 1000
    assert summary["messages_posted"] == 400
    assert summary["lost"] == 0
    assert summary["duplicated"] == 0
    assert summary["out_of_order"] == 0
    assert summary["deliveries_received"] == summary["deliveries_expected"] == 400_000
    assert summary["stream_reconnects"] >= 500  # every stream of the killed process came back
    assert code == 0
