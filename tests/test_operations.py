"""/healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from chat_server.app import create_app
from chat_server.keeper import keeper_key
from chat_server.settings import Settings

from .chat_client import WAIT, AiohttpClient, ChatClient
from .services import PrivateRedis
from .tcp_proxy import TcpProxy
from .test_limits import make_process  # noqa: F401 - the fixture
from .test_scale_out import private_redis, shared_redis  # noqa: F401 - the fixtures
from .waiting import eventually

MakeClient = Callable[..., Awaitable[ChatClient]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: ChatClient) -> Samples:
    """Every sample of /metrics, parsed by the Prometheus client's own parser."""
    async with client.http.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_readyz_when_store_and_broker_answer(client: ChatClient) -> None:
    body = await client.call("GET", "/readyz", status=200)
    assert body == {"status": "ready", "pid": os.getpid(), "store": "ok", "broker": "ok", "tasks": "ok"}


async def test_readyz_and_healthz_when_the_store_does_not_answer(
    proxied_mysql: tuple[str, TcpProxy], aiohttp_client: AiohttpClient
) -> None:
    url, proxy = proxied_mysql
    client = ChatClient(await aiohttp_client(create_app(Settings(database_url=url, secret="s"))))
    await readyz_until(client, 200)
    proxy.stall()
    async with asyncio.timeout(WAIT):  # a silent database is a 503 within seconds, not a hang
        ready = await client.call("GET", "/readyz", status=503)
        assert ready == {"error": "not ready", "store": "unavailable", "broker": "ok", "tasks": "ok"}
        assert await client.call("GET", "/healthz", status=503) == {"error": "database unavailable"}
    proxy.resume()
    await readyz_until(client, 200)  # recovered by itself
    assert (await client.call("GET", "/healthz", status=200))["status"] == "ok"


async def test_readyz_when_redis_does_not_answer(
    make_process: MakeClient,  # noqa: F811
    private_redis: PrivateRedis,  # noqa: F811
) -> None:
    client = await make_process(private_redis.url)
    await client.call("GET", "/readyz", status=200)
    private_redis.stop()
    ready = await client.call("GET", "/readyz", status=503)
    assert ready == {"error": "not ready", "store": "ok", "broker": "unavailable", "tasks": "ok"}
    # The process is up and its store answers: healthy, only not ready.
    assert (await client.call("GET", "/healthz", status=200))["status"] == "ok"


async def test_metrics_parse_and_move_when_messages_flow(client: ChatClient) -> None:
    general = client.store.general_id
    before = await scrape(client)
    for name in (
        "chat_messages_stored_total",
        "chat_deliveries_total",
        "chat_slow_consumer_disconnects_total",
        "chat_replayed_messages_total",
        "chat_publish_to_write_seconds_count",
        "chat_late_releases_total",
        "chat_release_wait_seconds_count",
        "chat_announcement_round_trip_seconds_count",  # one process: nothing goes through Redis
        "chat_follower_gap_waits_total",
        "chat_broker_resyncs_total",
    ):
        assert value(before, name) == 0, name
    assert value(before, "chat_open_streams") == 0
    assert value(before, "chat_broker_healthy") == 1
    assert value(before, "process_open_fds") > 0

    stream = await client.open_stream({"chat_id": general})
    sent = [await client.post(general, f"m{i}") for i in range(3)]
    assert await stream.messages(3) == sent
    during = await scrape(client)
    assert value(during, "chat_open_streams") == 1
    assert value(during, "chat_messages_stored_total") == 3
    assert value(during, "chat_messages_published_total") == 3
    assert value(during, "chat_deliveries_total") == 3
    assert value(during, "chat_publish_to_write_seconds_count") == 3
    assert value(during, "chat_publish_to_write_seconds_bucket", le="+Inf") == 3
    assert value(during, "chat_publish_to_write_seconds_sum") >= 0
    assert value(during, "chat_release_wait_seconds_count") == 3  # one process: each is next
    assert value(during, "chat_release_wait_seconds_bucket", le="+Inf") == 3
    assert value(during, "chat_http_requests_total", method="POST", route="/api/messages", status="201") == 3
    assert value(during, "chat_http_requests_total", method="GET", route="/api/stream", status="200") == 1
    stream.close()

    resumed = await client.open_stream({"chat_id": general}, {"Last-Event-ID": "0"})
    assert await resumed.messages(3) == sent
    resumed.close()
    await client.call("GET", "/no/such/route", status=404)
    await eventually(lambda: client.hub.subscriber_count == 0, "the streams are closed")
    after = await scrape(client)
    assert value(after, "chat_replayed_messages_total") == 3
    assert value(after, "chat_open_streams") == 0
    assert value(after, "chat_http_requests_total", method="GET", route="(unmatched)", status="404") == 1
    assert value(after, "chat_http_requests_total", method="GET", route="/metrics", status="200") == 2


async def test_each_app_keeps_its_own_metrics(make_client: MakeClient) -> None:
    a, b = await make_client(), await make_client()
    await a.post(a.store.general_id, "solo en a")
    assert value(await scrape(a), "chat_messages_stored_total") == 1
    assert value(await scrape(b), "chat_messages_stored_total") == 0


async def readyz_until(client: ChatClient, status: int) -> dict[str, object]:
    """/readyz asked again and again until it answers `status` (fails after WAIT seconds)."""
    async with asyncio.timeout(WAIT):
        while True:
            async with client.http.get("/readyz") as resp:
                if resp.status == status:
                    body: dict[str, object] = await resp.json()
                    return body


# The store plays no part: one backend is enough.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_failed_background_task_is_restarted_and_counted_and_not_ready_meanwhile(
    client: ChatClient,
) -> None:
    keeper = client.app[keeper_key]
    assert keeper.running("heartbeats")
    # Long enough to be seen down (1 to 2 s, jittered); short enough to wait out.
    keeper.first_delay = 2.0
    crash, restarted = asyncio.Event(), asyncio.Event()

    async def flaky() -> None:
        if not crash.is_set():
            crash.set()
            raise RuntimeError("the first run fails")
        restarted.set()
        await asyncio.Event().wait()  # runs until stopped

    await readyz_until(client, 200)
    keeper.spawn("flaky", flaky)
    down = await readyz_until(client, 503)
    assert down == {
        "error": "not ready",
        "store": "ok",
        "broker": "ok",
        "tasks": "unavailable",
        "down": ["flaky"],
    }
    assert value(await scrape(client), "chat_background_tasks_down") == 1
    await asyncio.wait_for(restarted.wait(), WAIT)
    assert (await readyz_until(client, 200))["tasks"] == "ok"
    samples = await scrape(client)
    assert value(samples, "chat_background_task_restarts_total", task="flaky") == 1
    assert value(samples, "chat_background_tasks_down") == 0
    assert keeper.running("flaky")
    await keeper.stop("flaky")
    assert not keeper.running("flaky")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_redis_reader_killed_by_a_bad_announcement_is_restarted_and_not_ready_meanwhile(
    make_process: MakeClient,  # noqa: F811
    shared_redis: str,  # noqa: F811
) -> None:
    client = await make_process(shared_redis)
    keeper = client.app[keeper_key]
    keeper.first_delay = 2.0  # long enough to be seen down
    await readyz_until(client, 200)
    # Anyone who can publish on the channel can send what the reader does not expect.
    async with redis.asyncio.from_url(shared_redis) as other:
        await other.publish(client.broker.channel, b"not json")
    down = await readyz_until(client, 503)
    assert down["down"] == ["broker-reader"]
    await readyz_until(client, 200)
    assert value(await scrape(client), "chat_background_task_restarts_total", task="broker-reader") == 1
    # The restarted reader hears announcements again: a post reaches a stream.
    stream = await client.open_stream({"chat_id": client.store.general_id})
    sent = await client.post(client.store.general_id, "after the restart")
    assert await stream.messages(1) == [sent]
    stream.close()
