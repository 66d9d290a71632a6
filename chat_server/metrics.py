"""GET /metrics: Prometheus text, from a registry owned by the app (not the global one, so any
number of apps, as in the tests, keep their own numbers).

Most figures are counters the hub and the store keep anyway, read when scraped by a custom
collector; HTTP requests are counted as each response starts, by method, route (the route's
pattern, never the raw path, so the label set stays small) and status. Each process answers for
itself: with --workers, scrape each, or sum what the scrapes return.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .broker import RedisBroker, broker_key
from .errors import Unauthorized
from .histogram import Histogram
from .hub import hub_key
from .keeper import Keeper, keeper_key
from .migrate_legacy import LegacyBackfill, backfill_key
from .settings import settings_key
from .store import store_key

# Requests that matched no route share one label, so random paths cannot grow the label set.
UNMATCHED = "(unmatched)"


class Metrics:
    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(ChatCollector(app))
        ProcessCollector(registry=self.registry)
        self.http_requests = Counter(
            "chat_http_requests",
            "HTTP responses started, by method, route pattern and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        # Each label set's child, looked up once: labels() validates and locks on every call.
        self._children: dict[tuple[str, str, int], Counter] = {}

    def count_response(self, request: web.Request, response: web.StreamResponse) -> None:
        resource = request.match_info.route.resource
        route = UNMATCHED if resource is None else resource.canonical
        key = (request.method, route, response.status)
        child = self._children.get(key)
        if child is None:
            child = self.http_requests.labels(request.method, route, str(response.status))
            self._children[key] = child
        child.inc()


class ChatCollector:
    """Reads the hub's and the store's own counters when scraped."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        hub, store, broker = self.app.get(hub_key), self.app.get(store_key), self.app.get(broker_key)
        if hub is None or store is None or broker is None:
            return  # not started yet (or already stopped)
        stats = hub.stats
        yield GaugeMetricFamily(
            "chat_open_streams", "Event streams open on this process", hub.subscriber_count
        )
        yield CounterMetricFamily(
            "chat_messages_stored", "Messages stored by this process", store.messages_stored
        )
        yield CounterMetricFamily(
            "chat_messages_published",
            "Messages released to this process's streams (with Redis: those of every process)",
            stats.published,
        )
        yield CounterMetricFamily("chat_deliveries", "Events handed to streams", stats.deliveries)
        yield CounterMetricFamily(
            "chat_slow_consumer_disconnects",
            "Streams dropped for falling too far behind",
            stats.slow_disconnects,
        )
        yield CounterMetricFamily(
            "chat_replayed_messages", "Messages replayed from the database on (re)connect", stats.replayed
        )
        yield CounterMetricFamily(
            "chat_heartbeats", "Heartbeats written to streams that were silent for a while", stats.heartbeats
        )
        latency = stats.write_latency
        yield HistogramMetricFamily(
            "chat_publish_to_write_seconds",
            "From the hub releasing an event to its write to a stream's socket, per delivery",
            buckets=latency.cumulative(),
            sum_value=latency.sum,
        )
        sequencer = hub.sequencer
        held = sequencer.held_for
        yield HistogramMetricFamily(
            "chat_release_wait_seconds",
            "From a message's first offer (stored here, announced, or read from the table) to its"
            " release in id order: its wait for lower ids, per message",
            buckets=held.cumulative(),
            sum_value=held.sum,
        )
        yield CounterMetricFamily(
            "chat_late_releases",
            "Messages released below the watermark (a wrong proof of absence): expected 0",
            sequencer.late,
        )
        yield CounterMetricFamily(
            "chat_ids_proven_absent",
            "Message ids the database proved will never commit",
            sequencer.proven_absent,
        )
        yield CounterMetricFamily(
            "chat_follower_gap_waits",
            "Gaps in the ids that announcements did not fill, settled from the database",
            broker.follower.gap_waits,
        )
        yield CounterMetricFamily(
            "chat_broker_resyncs",
            "Times this process ended its streams after the Redis channel came back",
            broker.resyncs if isinstance(broker, RedisBroker) else 0,
        )
        yield CounterMetricFamily(
            "chat_broker_messages_heard",
            "Messages stored by other processes whose announcements this process applied",
            broker.messages_heard if isinstance(broker, RedisBroker) else 0,
        )
        trip = broker.announcer.round_trip if isinstance(broker, RedisBroker) else Histogram()
        yield HistogramMetricFamily(
            "chat_announcement_round_trip_seconds",
            "From publishing a message announcement to hearing it back on this process's own"
            " subscription: the hop through Redis that messages to other processes take",
            buckets=trip.cumulative(),
            sum_value=trip.sum,
        )
        healthy = broker.healthy if isinstance(broker, RedisBroker) else True
        yield GaugeMetricFamily(
            "chat_broker_healthy", "1 while fan-out goes through the broker, 0 while degraded", healthy
        )
        yield from _task_metrics(self.app[keeper_key])
        yield from _legacy_backfill(self.app.get(backfill_key))


def _task_metrics(keeper: Keeper) -> Iterator[Metric]:
    restarts = CounterMetricFamily(
        "chat_background_task_restarts",
        "Background tasks started again after they failed, by task",
        labels=["task"],
    )
    for name, count in sorted(keeper.restarts.items()):
        restarts.add_metric([name], count)
    yield restarts
    yield GaugeMetricFamily(
        "chat_background_tasks_down", "Background tasks failed and waiting to be restarted", len(keeper.down)
    )


def _legacy_backfill(backfill: LegacyBackfill | None) -> Iterator[Metric]:
    if backfill is None:
        return
    migration = backfill.migration
    yield GaugeMetricFamily(
        "chat_legacy_rows_left",
        "Rows of the legacy table this process has still to copy into the chats",
        migration.left if migration else 0,
    )
    yield CounterMetricFamily(
        "chat_legacy_rows_copied",
        "Rows of the legacy table copied into the chats by this process since it started",
        migration.report.copied if migration else 0,
    )
    yield GaugeMetricFamily(
        "chat_legacy_copy_done",
        "1 once this process has nothing more of the legacy table to copy",
        backfill.done.is_set(),
    )


async def metrics_handler(request: web.Request) -> web.Response:
    _require_metrics_token(request)
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(request.app[metrics_key].registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


def _require_metrics_token(request: web.Request) -> None:
    """With CHAT_METRICS_TOKEN set, scrapes must bring it as a Bearer token (constant time)."""
    expected = request.app[settings_key].metrics_token
    if expected is None:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise Unauthorized("the metrics need their bearer token")


async def _count_response(request: web.Request, response: web.StreamResponse) -> None:
    request.app[metrics_key].count_response(request, response)


def setup(app: web.Application) -> None:
    app[metrics_key] = Metrics(app)
    # Counted when the response starts: a stream counts once, with the status it was sent with.
    app.on_response_prepare.append(_count_response)
    app.router.add_get("/metrics", metrics_handler)


metrics_key = web.AppKey("metrics", Metrics)
