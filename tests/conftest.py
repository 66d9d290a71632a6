"""Fixtures: one API suite, parametrised over both stores."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from chat_server.app import create_app
from chat_server.settings import Settings

from .chat_client import AiohttpClient, ChatClient
from .databases import PORT, throwaway_database
from .openapi_check import ResponseRecorder
from .statements import mariadb_only, recording
from .tcp_proxy import TcpProxy

BACKENDS = ("sqlite", "mysql")
# A test marked so runs on a third backend as well: MariaDB, with the server in its MySQL 8
# dialect (store/dialect.py), every statement it sends recorded and held to MySQL 8.0's syntax.
every_dialect = pytest.mark.parametrize("database_url", [*BACKENDS, "mysql8"], indirect=True)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/chat.sqlite3"
    elif request.param == "mysql8":
        with throwaway_database() as url, recording() as sent:
            yield url + "?dialect=mysql8"
        assert sent, "nothing recorded: the check below would pass for nothing"
        refused = {sql: problems for sql in sent if (problems := mariadb_only(sql))}
        assert refused == {}, "statements MySQL 8.0 would refuse"
    else:
        with throwaway_database() as url:
            yield url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, secret="test-secret")


@pytest.fixture
def openapi_responses() -> Iterator[ResponseRecorder]:
    """Every response of the test's apps, held to docs/openapi.json once the test is over."""
    recorder = ResponseRecorder()
    yield recorder
    assert recorder.problems == [], "responses that docs/openapi.json does not describe"


@pytest.fixture
def make_client(
    settings: Settings,
    openapi_responses: ResponseRecorder,
    aiohttp_client: AiohttpClient,
) -> Callable[..., Awaitable[ChatClient]]:
    """A client of a fresh app; keyword arguments override settings. (`settings` comes first so
    that the database outlives the apps, which are torn down before it.)"""

    async def make(**overrides: object) -> ChatClient:
        app = create_app(replace(settings, **overrides))  # type: ignore[arg-type]
        openapi_responses.attach(app)
        # Without cookies: each call names its caller itself (tests/test_security.py keeps them).
        return ChatClient(await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar()))

    return make


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[ChatClient]]) -> ChatClient:
    return await make_client()


@pytest.fixture
async def proxied_mysql() -> AsyncIterator[tuple[str, TcpProxy]]:
    """A throwaway MariaDB database reached through a proxy the test can stall: the URL, the
    proxy. (Ask for it before `aiohttp_client`, so that the apps are closed before it.)"""
    with throwaway_database() as url:
        async with TcpProxy(PORT) as proxy:
            yield url.replace(f":{PORT}/", f":{proxy.port}/"), proxy
