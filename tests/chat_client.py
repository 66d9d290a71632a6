"""A test client that speaks the chat API: login, post, read, and streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from chat_server.hub import Hub, hub_key
from chat_server.store import Store, store_key

# pytest-aiohttp's `aiohttp_client` fixture.
AiohttpClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]

# How long a test waits for something that should happen now, before failing.
WAIT = 10.0


@dataclass
class SseEvent:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: str | None = None
    comments: list[str] = field(default_factory=list)


class Stream:
    """An open SSE response, read event by event with a timeout."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response

    async def raw_until_blank(self) -> bytes:
        frame = await asyncio.wait_for(self.response.content.readuntil(b"\n\n"), WAIT)
        if not frame.endswith(b"\n\n"):
            # At its end the stream answers at once with what is left, forever: a reader that
            # waits for one more event must fail, not spin.
            raise ConnectionResetError("the stream ended")
        return frame

    async def next_event(self, *, skip_comments: bool = True) -> SseEvent:
        while True:
            event = SseEvent()
            for line in (await self.raw_until_blank()).decode().split("\n"):
                if not line:
                    continue
                if line.startswith(":"):
                    event.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(": ")
                setattr(event, name, value)
            if not (skip_comments and event.comments and event.event is None and event.retry is None):
                return event

    async def messages(self, count: int) -> list[dict[str, Any]]:
        """The next `count` message events' data, skipping other events."""
        from chat_server.jsonutil import loads

        out: list[dict[str, Any]] = []
        while len(out) < count:
            event = await self.next_event()
            if event.event == "message":
                data = loads(event.data or "")
                assert str(data["id"]) == event.id
                out.append(data)
        return out

    async def ended(self) -> bool:
        """Whether the server ended the stream properly (the response's end arrived, so the
        EventSource reconnects and resumes) within WAIT seconds; False when the connection broke
        off instead, or nothing ended it."""
        try:
            await asyncio.wait_for(self.response.content.read(), WAIT)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
            return False
        return self.response.content.at_eof()

    def close(self) -> None:
        self.response.close()


class ChatClient:
    def __init__(self, client: TestClient[web.Request, web.Application]) -> None:
        self.http = client

    @property
    def app(self) -> web.Application:
        app = self.http.app
        assert app is not None
        return app

    @property
    def store(self) -> Store:
        return self.app[store_key]

    @property
    def hub(self) -> Hub:
        return self.app[hub_key]

    @property
    def broker(self) -> Any:
        from chat_server.broker import broker_key

        return self.app[broker_key]

    async def call(self, method: str, path: str, *, status: int | None = None, **kwargs: Any) -> Any:
        async with self.http.request(method, path, **kwargs) as resp:
            body = await resp.json(content_type=None)
            if status is not None:
                assert resp.status == status, (resp.status, body)
            return body

    async def login(self, username: str, *, status: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = await self.call(
            "POST", "/api/login", json={"username": username}, status=status
        )
        return body

    async def post(self, chat_id: int, contenido: str, username: str = "ana") -> dict[str, Any]:
        body = await self.call(
            "POST",
            "/api/messages",
            json={"chat_id": chat_id, "contenido": contenido, "username": username},
            status=201,
        )
        message: dict[str, Any] = body["message"]
        return message

    async def chats(self, username: str) -> list[dict[str, Any]]:
        body = await self.call("GET", "/api/chats", params={"username": username}, status=200)
        chats: list[dict[str, Any]] = body["chats"]
        return chats

    async def dm_id(self, username: str, with_username: str) -> int:
        body = await self.call(
            "POST", "/api/chats/dm", json={"username": username, "with_username": with_username}
        )
        return int(body["chat"]["id"])

    async def history(self, chat_id: int, **params: Any) -> list[dict[str, Any]]:
        body = await self.call("GET", "/api/messages", params={"chat_id": chat_id, **params}, status=200)
        messages: list[dict[str, Any]] = body["messages"]
        return messages

    async def open_stream(
        self, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> Stream:
        resp = await self.http.get("/api/stream", params=params or {}, headers=headers or {})
        assert resp.status == 200, (resp.status, await resp.text())
        stream = Stream(resp)
        preamble = await stream.next_event()
        assert preamble.retry == "3000"
        return stream


class Follower:
    """What a browser's EventSource does: follow a stream, and when it ends or breaks, reconnect
    with Last-Event-ID. Collects the ids of message events, and counts reconnects."""

    def __init__(
        self, session: Any, url: str, params: dict[str, Any], *, silence: float | None = None
    ) -> None:
        self.session = session
        self.url = url
        self.params = params
        # Reconnect after this long without a byte (heartbeats included): a server whose network
        # went away sends nothing, not even an end. None: wait as long as the connection lasts.
        self.silence = silence
        self.ids: list[int] = []
        self.connects = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        connected = asyncio.Event()
        self._task = asyncio.create_task(self._run(connected))
        await asyncio.wait_for(connected.wait(), WAIT)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_for(self, count: int) -> list[int]:
        """The ids once at least `count` have arrived (fails after a generous deadline)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.ids) >= count), 3 * WAIT)
        return list(self.ids)

    async def _run(self, connected: asyncio.Event) -> None:
        while True:
            headers = {"Last-Event-ID": str(self.ids[-1])} if self.ids else {}
            try:
                async with self.session.get(self.url, params=self.params, headers=headers) as resp:
                    if resp.status == 200:
                        self.connects += 1
                        connected.set()
                        await self._read(resp)
            except (aiohttp.ClientError, ConnectionError, TimeoutError):
                pass
            await asyncio.sleep(0.05)  # EventSource's retry delay, shortened

    async def _read(self, resp: ClientResponse) -> None:
        buffer = b""
        while chunk := await asyncio.wait_for(resp.content.readany(), self.silence):
            buffer += chunk
            *frames, buffer = buffer.split(b"\n\n")
            for frame in frames:
                lines = [ln for ln in frame.decode().split("\n") if ": " in ln and not ln.startswith(":")]
                fields = dict(line.split(": ", 1) for line in lines)
                if fields.get("event") == "message":
                    async with self._changed:
                        self.ids.append(int(fields["id"]))
                        self._changed.notify_all()


async def stored_ids(
    session: aiohttp.ClientSession, url: str, chat_id: int, headers: dict[str, str] | None = None
) -> list[int]:
    """Every message id stored in a chat, oldest first (`url`: the server's /api/messages)."""
    ids: list[int] = []
    while True:
        params = {"chat_id": chat_id, "after_id": ids[-1] if ids else 0, "limit": 200}
        async with session.get(url, params=params, headers=headers or {}) as resp:
            assert resp.status == 200, await resp.text()
            page = [int(m["id"]) for m in (await resp.json())["messages"]]
        if not page:
            return ids
        ids += page
