"""The application factory: everything the server holds is built here and owned by cleanup_ctx."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp_cors
from aiohttp import web
from aiohttp.typedefs import Middleware

from . import api, frontend, legacy, login, metrics, migrate_legacy, openapi, service, streams
from .auth import NewUsers, new_users_key
from .broker import Broker, LocalBroker, RedisBroker, broker_key, channel_for
from .edge import MAX_BODY_BYTES, decode_headers
from .errors import error_middleware
from .hub import Hub, hub_key
from .keeper import Keeper, keeper_key
from .leases import Lease, lease_key
from .limits import Limits, RateLimiter, RedisRateLimiter, RedisStreamSlots, StreamSlots, limits_key
from .presence import LocalPresence, Presence, RedisPresence, presence_key
from .proxies import TrustedProxies, proxy_middleware
from .redis_batch import RedisBatch, redis_batch_key
from .sessions import Sessions, sessions_key
from .settings import Settings, settings_key
from .store import open_store, store_key

CORS_HEADERS = ("Content-Type", "Authorization", "X-Username", "Last-Event-ID")


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings.from_env()
    middlewares: list[Middleware] = [error_middleware, decode_headers]
    if settings.trusted_proxies:
        # First, so that everything after it (errors, limits, cookies) sees the client.
        middlewares.insert(0, proxy_middleware(TrustedProxies(settings.trusted_proxies)))
    app = web.Application(
        middlewares=middlewares,
        client_max_size=MAX_BODY_BYTES,
        # Bodies are decompressed by edge.body_bytes, where a lie is always a 400 JSON.
        handler_args={"auto_decompress": False},
    )
    app[settings_key] = settings
    app[new_users_key] = NewUsers()
    app.cleanup_ctx.append(_keeper_ctx)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_hub_ctx)
    app.cleanup_ctx.append(_broker_ctx)
    app.cleanup_ctx.append(_redis_batch_ctx)
    app.cleanup_ctx.append(_lease_ctx)
    app.cleanup_ctx.append(_presence_ctx)
    app.cleanup_ctx.append(_limits_ctx)
    app.cleanup_ctx.append(_sessions_ctx)
    app.cleanup_ctx.append(migrate_legacy.backfill_ctx)
    app.on_shutdown.append(_end_streams)
    api.setup_routes(app)
    login.setup_routes(app)
    legacy.setup_routes(app)
    streams.setup_routes(app)
    frontend.setup_routes(app)
    openapi.setup_routes(app)
    metrics.setup(app)
    _setup_cors(app, settings)
    return app


async def _keeper_ctx(app: web.Application) -> AsyncIterator[None]:
    # First in, last out: every owner stops its own tasks before its resources close.
    keeper = app[keeper_key] = Keeper()
    yield
    await keeper.close()


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = open_store(app[settings_key].database_url)
    try:
        await store.start()
        app[store_key] = store
        yield
    finally:
        await store.close()


async def _hub_ctx(app: web.Application) -> AsyncIterator[None]:
    # Streams replay from the database up to the newest message the hub has released.
    hub = Hub(app[settings_key].subscriber_buffer, await app[store_key].latest_message_id())
    hub.general_id = app[store_key].general_id
    app[hub_key] = hub
    keeper, interval = app[keeper_key], app[settings_key].heartbeat_seconds
    keeper.spawn("heartbeats", lambda: hub.beat_forever(interval))
    yield
    await keeper.stop("heartbeats")
    hub.close()


async def _broker_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    broker: Broker
    if settings.redis_url:
        broker = RedisBroker(
            app[hub_key],
            app[store_key],
            app[keeper_key],
            settings.redis_url,
            channel_for(settings.database_url),
        )
    else:
        broker = LocalBroker(app[hub_key], app[store_key], app[keeper_key])
    await broker.start()
    app[broker_key] = broker
    yield
    await broker.close()


async def _redis_batch_ctx(app: web.Application) -> AsyncIterator[None]:
    """Presence and limits share one batch over the broker's Redis client (after them, it
    closes: what they queue at their close is still sent)."""
    broker = app[broker_key]
    if not isinstance(broker, RedisBroker):
        yield
        return
    batch = app[redis_batch_key] = RedisBatch(broker.redis)
    yield
    await batch.close()


async def _lease_ctx(app: web.Application) -> AsyncIterator[None]:
    """The process's lease, under which presence and the stream cap keep their records (after
    them, it closes: their last writes go out under it)."""
    broker = app[broker_key]
    if not isinstance(broker, RedisBroker):
        yield
        return
    ttl = app[settings_key].presence_ttl
    lease = app[lease_key] = Lease(app[redis_batch_key], broker.channel, broker.process_id, ttl)
    await lease.start(app[keeper_key])
    yield
    await lease.close()


async def _presence_ctx(app: web.Application) -> AsyncIterator[None]:
    broker = app[broker_key]

    async def announce(user_id: int, online: bool) -> None:
        await service.announce_presence(app, user_id, online)

    presence: Presence
    if isinstance(broker, RedisBroker):
        presence = RedisPresence(announce, app[lease_key])
    else:
        presence = LocalPresence(announce)
    app[presence_key] = presence
    yield
    await presence.close()


async def _limits_ctx(app: web.Application) -> AsyncIterator[None]:
    """Limits shared by every process through the broker's Redis, when there is one."""
    settings, broker = app[settings_key], app[broker_key]
    rates: RateLimiter
    slots: StreamSlots
    if isinstance(broker, RedisBroker):
        batch = app[redis_batch_key]
        rates = RedisRateLimiter(batch, broker.channel)
        slots = RedisStreamSlots(app[lease_key])
    else:
        rates, slots = RateLimiter(), StreamSlots()
    app[limits_key] = Limits(settings, rates, slots)
    yield


async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    app[sessions_key] = Sessions(app[settings_key], app[store_key], app[broker_key])
    yield


async def _end_streams(app: web.Application) -> None:
    # Open streams would otherwise hold shutdown for the whole shutdown timeout, twice.
    app[hub_key].close()


def _setup_cors(app: web.Application, settings: Settings) -> None:
    """Listed origins get credentialed CORS; with none listed, any origin, without credentials."""
    credentials = bool(settings.cors_origins)
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=credentials,
        expose_headers="*",
        allow_headers=CORS_HEADERS,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        max_age=600,
    )
    cors = aiohttp_cors.setup(app, defaults={o: options for o in settings.cors_origins or ("*",)})
    for route in list(app.router.routes()):
        cors.add(route)
    if credentials:
        app.on_response_prepare.append(_vary_on_origin)


async def _vary_on_origin(request: web.Request, response: web.StreamResponse) -> None:
    # With listed origins, answers differ by Origin; aiohttp-cors does not say so (its #351).
    if "Origin" not in response.headers.getall("Vary", ()):
        response.headers.add("Vary", "Origin")
