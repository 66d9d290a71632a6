"""The load-test tool: its SSE accounting, runs against a real server, and its command line."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from chat_server import jsonutil
from chat_server.app import create_app
from chat_server.loadtest import cli, parse_args
from chat_server.loadtest.protocol import WorkerResult
from chat_server.loadtest.report import RunRecord, summarize
from chat_server.loadtest.wire import Receiver, StreamState, tag
from chat_server.settings import Settings
from chat_server.sse import HEARTBEAT, PREAMBLE, encode_event

from .chat_client import WAIT

ROOT = Path(__file__).resolve().parent.parent
# A guard against a hung run, not a measurement: small runs take a second or two.
RUN_WAIT = 120.0
SUMMARY_FIELDS = {
    "url",
    "run_id",
    "processes",
    "cpus",
    "chats",
    "streams_requested",
    "streams_connected",
    "streams_failed",
    "streams_ended_early",
    "stream_reconnects",
    "connect_seconds",
    "messages_requested",
    "messages_posted",
    "posts_failed",
    "post_rate_target",
    "post_rate_actual",
    "post_latency_ms",
    "deliveries_expected",
    "deliveries_received",
    "lost",
    "duplicated",
    "out_of_order",
    "unexpected",
    "dropped_on_purpose",
    "delivery_latency_ms",
    "deliveries_per_second",
    "drain_seconds",
    "drain_timed_out",
    "server_pid",
    "server_rss_before_mb",
    "server_rss_after_mb",
    "server_cpu_seconds",
    "server_cpu_percent",
    "server_cpu_ms_per_post",
    "loadtest_cpu_seconds",
    "loadtest_cpu_percent_of_wall",
    "loadtest_busiest_process_cpu_percent",
    "loadtest_reader_cpu_ms_per_post",
    "wall_seconds",
    "errors",
    "ok",
}
# 20 streams over 2 DMs (10 each), 10 messages round-robin (5 each): 100 deliveries.
SMALL_RUN = ["--streams", "20", "--chats", "2", "--messages", "10", "--rate", "200", "--processes", "1"]


@pytest.fixture
async def server_url(tmp_path: Path) -> AsyncIterator[str]:
    """The real app on a free port of this process."""
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/x.db", secret="x"))
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def one_json_line(stdout: str) -> dict[str, Any]:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    summary: dict[str, Any] = jsonutil.loads(lines[0])
    return summary


def _frame(message_id: int, run_id: str, sent_ns: int) -> bytes:
    message = {"id": message_id, "chat_id": 7, "contenido": tag(run_id, message_id, sent_ns)}
    return encode_event("message", message, event_id=message_id)


def test_the_receiver_reads_the_server_wire_format_split_anywhere_and_tallies_the_stream() -> None:
    sent, now = 1_000_000_000, 1_002_500_000
    wire = b"".join(
        [
            PREAMBLE,
            _frame(1, "run", sent),
            HEARTBEAT,
            _frame(3, "run", sent),
            encode_event("chat", {"id": 9}),
            _frame(2, "run", sent),  # late
            _frame(3, "run", sent),  # again
            _frame(4, "someone-else", sent),  # not this run's
            _frame(5, "run", sent),
        ]
    )
    receiver, stream = Receiver("run"), StreamState(chat_id=7)
    for i in range(len(wire)):
        receiver.feed(stream, wire[i : i + 1], now)
    assert list(stream.ids) == [1, 3, 2, 5]
    assert (stream.duplicated, stream.out_of_order) == (1, 1)
    assert receiver.received == 5
    assert list(receiver.latencies_ms) == [2.5] * 4
    assert stream.pending == b""


def test_the_receiver_drops_every_nth_delivery_when_asked() -> None:
    receiver, stream = Receiver("run", drop_every=2), StreamState(chat_id=7)
    receiver.feed(stream, b"".join(_frame(i, "run", 0) for i in range(1, 6)), 1)
    assert list(stream.ids) == [1, 3, 5]
    assert (receiver.received, receiver.dropped) == (3, 2)


def worker_result(index: int, busy_cpu_seconds: float) -> WorkerResult:
    return WorkerResult(
        index=index, received=0, dropped=0, lost=0, duplicated=0, out_of_order=0, unexpected=0,
        ended_early=0, reconnects=0, latencies_ms=b"", last_ns=None, cpu_seconds=busy_cpu_seconds + 1,
        wall_seconds=10, busy_cpu_seconds=busy_cpu_seconds, busy_wall_seconds=5, errors=[],
    )  # fmt: skip


def test_the_readers_cpu_per_post_is_their_cpu_once_connected_over_the_posts() -> None:
    record = RunRecord(parse_args(["--url", "http://127.0.0.1:1", "--processes", "2"]), "run")
    assert summarize(record)["loadtest_reader_cpu_ms_per_post"] is None  # nothing posted
    for n in range(4):
        record.posts.add(chat_id=1, message_id=n + 1, latency_ms=1.0)
    # The connect phase (cpu_seconds less busy_cpu_seconds) is not the posts'.
    record.workers = [worker_result(0, 0.25), worker_result(1, 0.75)]
    assert summarize(record)["loadtest_reader_cpu_ms_per_post"] == 250.0


async def test_a_clean_run_reports_every_figure_and_exits_0(
    server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--url", server_url, *SMALL_RUN, "--server-pid", str(os.getpid())]
    code = await asyncio.wait_for(cli(argv), RUN_WAIT)
    summary = one_json_line(capsys.readouterr().out)
    assert set(summary) == SUMMARY_FIELDS
    assert code == 0, summary
    assert summary["ok"] is True
    assert (summary["chats"], summary["processes"]) == (2, 1)
    assert (summary["streams_connected"], summary["streams_failed"], summary["streams_ended_early"]) == (
        20,
        0,
        0,
    )
    assert (summary["messages_posted"], summary["posts_failed"]) == (10, 0)
    assert summary["deliveries_expected"] == summary["deliveries_received"] == 100
    assert [summary[k] for k in ("lost", "duplicated", "out_of_order", "unexpected")] == [0, 0, 0, 0]
    assert summary["dropped_on_purpose"] == 0
    assert summary["drain_timed_out"] is False
    delivery = summary["delivery_latency_ms"]
    assert 0 <= delivery["p50"] <= delivery["p90"] <= delivery["p99"] <= delivery["max"]
    posting = summary["post_latency_ms"]
    assert 0 < posting["p50"] <= posting["p99"] <= posting["max"]
    assert summary["deliveries_per_second"] > 0
    # The server runs in this process, so its RSS is ours.
    assert summary["server_rss_before_mb"] > 0
    assert summary["server_rss_after_mb"] > 0
    assert summary["loadtest_cpu_seconds"] >= 0
    assert summary["loadtest_busiest_process_cpu_percent"] >= 0
    assert summary["errors"] == []


async def test_a_delivery_dropped_on_purpose_is_counted_lost_and_fails_the_run(
    server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # One worker receives all 100 deliveries and discards the 100th.
    argv = ["--url", server_url, *SMALL_RUN, "--drop-every", "100", "--json-only"]
    code = await asyncio.wait_for(cli(argv), RUN_WAIT)
    captured = capsys.readouterr()
    assert captured.err == ""
    summary = one_json_line(captured.out)
    assert summary["deliveries_expected"] == 100
    assert summary["dropped_on_purpose"] == 1
    assert summary["deliveries_received"] == 99
    assert summary["lost"] == 1
    assert (summary["duplicated"], summary["out_of_order"]) == (0, 0)
    assert summary["drain_timed_out"] is False
    assert summary["server_rss_before_mb"] is None
    assert summary["server_cpu_seconds"] is None
    assert summary["server_cpu_ms_per_post"] is None
    assert summary["ok"] is False
    assert code == 1


async def test_streams_connect_from_the_source_addresses_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peers: set[str | None] = set()

    async def note_peer(request: web.Request, response: web.StreamResponse) -> None:
        if request.path == "/api/stream":
            peers.add(request.remote)

    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/x.db", secret="x"))
    app.on_response_prepare.append(note_peer)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        argv = ["--url", f"http://{host}:{port}", *SMALL_RUN, "--source-addresses", "127.0.0.2,127.0.0.3"]
        code = await asyncio.wait_for(cli([*argv, "--json-only"]), RUN_WAIT)
    finally:
        await runner.cleanup()
    summary = one_json_line(capsys.readouterr().out)
    assert code == 0, summary
    assert summary["streams_connected"] == 20
    assert peers == {"127.0.0.2", "127.0.0.3"}


@pytest.mark.parametrize(
    ("raw", "addresses"),
    [("3", ("127.0.0.1", "127.0.0.2", "127.0.0.3")), ("127.0.0.5, ::1", ("127.0.0.5", "::1"))],
)
def test_source_addresses_are_a_count_of_loopback_addresses_or_a_list(
    raw: str, addresses: tuple[str, ...]
) -> None:
    assert parse_args(["--source-addresses", raw]).source_addresses == addresses


@pytest.mark.parametrize("raw", ["0", "255", "127.0.0.x", ","])
def test_source_addresses_that_are_not_addresses_are_refused(raw: str) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--source-addresses", raw])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_until_healthy(url: str, server: asyncio.subprocess.Process) -> None:
    """Poll /healthz until the server answers; fail if it exits or takes longer than WAIT."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(WAIT):
        while True:
            assert server.returncode is None, "the server exited"
            try:
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)


async def test_the_command_line_against_a_server_process(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/cli.db", "CHAT_SECRET": "x"}
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "run.py",
        "--port",
        str(port),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_until_healthy(url, server)
        tool = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chat_server.loadtest",
            *("--url", url, "--streams", "20", "--messages", "10", "--rate", "200", "--processes", "2"),
            *("--server-pid", str(server.pid)),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(tool.communicate(), RUN_WAIT)
    finally:
        server.terminate()
        await server.wait()
    assert tool.returncode == 0, err.decode()
    summary = one_json_line(out.decode())
    assert set(summary) == SUMMARY_FIELDS
    # --chats defaults to 1: every stream follows General.
    assert (summary["chats"], summary["processes"], summary["streams_connected"]) == (1, 2, 20)
    assert summary["deliveries_expected"] == summary["deliveries_received"] == 200
    assert summary["lost"] == 0
    assert summary["server_pid"] == server.pid
    assert summary["server_rss_before_mb"] > 0
    assert summary["server_cpu_seconds"] >= 0
    # Over the posting phase alone (/proc counts CPU in ticks: a short run may show 0).
    assert isinstance(summary["server_cpu_ms_per_post"], float)
    assert summary["server_cpu_ms_per_post"] >= 0
    assert summary["ok"] is True
