"""The logs of a real server process (python run.py) that saw tokens, cookies and passwords
hold none of them; its access log is one JSON object per request."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import aiohttp
import pytest
from yarl import URL

from .services import free_port
from .waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0


@dataclass
class Server:
    base: str
    log: Path
    process: subprocess.Popen[bytes]
    secret: str
    admin_password: str

    def stop(self) -> str:
        """Stop it as an operator would, and return everything it logged."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(timeout=30) == 0
        return self.log.read_text("utf-8", errors="replace")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    secret, password = secrets.token_urlsafe(24), secrets.token_urlsafe(18)
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/chat.sqlite3",
        "CHAT_SECRET": secret,
        "CHAT_ADMIN_PASSWORD": password,
        "CHAT_TRUSTED_PROXIES": "127.0.0.1/32",
    }
    env.pop("REDIS_URL", None)
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "run.py", "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    server = Server(f"http://127.0.0.1:{port}", log, process, secret, password)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def wait_until_up(session: aiohttp.ClientSession, base: str) -> None:
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            try:
                async with session.get(f"{base}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)  # the process is starting: nothing to wait on but its port


async def test_logs_hold_no_token_cookie_or_password(server: Server) -> None:
    base = server.base
    wrong_password = "not-the-" + server.admin_password
    forged = "v1.1." + secrets.token_urlsafe(32)
    secrets_seen: list[str] = [server.admin_password, wrong_password, server.secret, forged]
    jar = aiohttp.CookieJar(unsafe=True)  # keeps cookies for an IP address, as a browser would
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        await wait_until_up(session, base)

        async def call(method: str, path: str, status: int, **kwargs: object) -> dict[str, object]:
            async with session.request(method, f"{base}{path}", **kwargs) as resp:  # type: ignore[arg-type]
                assert resp.status == status, await resp.text()
                body: dict[str, object] = await resp.json()
                return body

        admin = await call(
            "POST", "/api/login", 200, json={"username": "admin", "password": server.admin_password}
        )
        form = aiohttp.FormData({"username": "admin", "password": server.admin_password})
        await call("POST", "/api/login", 200, data=form)
        await call("POST", "/api/login", 401, json={"username": "admin", "password": wrong_password})
        ana = await call("POST", "/api/login", 201, json={"username": "ana"})
        tokens = [str(admin["token"]), str(ana["token"])]
        secrets_seen += tokens
        cookie = jar.filter_cookies(URL(base)).get("chat_token")
        assert cookie is not None
        secrets_seen.append(cookie.value)

        await call("GET", "/api/me", 200, headers={"Authorization": f"Bearer {tokens[0]}"})
        await call("GET", "/api/chats", 200, params={"token": tokens[1]})
        await call("GET", "/api/me", 200)  # by the cookie alone
        await call("POST", "/api/messages", 201, json={"chat_id": 1, "contenido": "hola"})
        await call("GET", "/api/messages", 200, params={"chat_id": 1, "token": tokens[0]})
        await call("GET", "/api/me", 401, params={"token": forged})
        await call("GET", "/api/me", 401, headers={"Authorization": f"Bearer {forged}"})
        async with session.get(f"{base}/api/stream", params={"token": tokens[1]}) as resp:
            assert resp.status == 200
            assert await resp.content.readuntil(b"\n\n") == b"retry: 3000\n\n"
        await call("GET", "/healthz", 200, headers={"X-Forwarded-For": "198.51.100.23"})
        # A login link's code, used and then refused; a session ended, its token then refused.
        ana_id = cast(dict[str, int], ana["user"])["id"]
        admin_auth = {"Authorization": f"Bearer {tokens[0]}"}
        link = await call("POST", f"/api/users/{ana_id}/login-link", 201, headers=admin_auth)
        secrets_seen += [str(link["code"]), str(link["url"])]
        await call("POST", "/api/login", 200, json={"login_code": link["code"]})
        await call("POST", "/api/login", 401, json={"login_code": link["code"]})
        await call("POST", "/api/logout", 200, headers={"Authorization": f"Bearer {tokens[1]}"})
        await call("GET", "/api/me", 401, params={"token": tokens[1]})
        await call("POST", "/api/logout", 200)

    logged = server.stop()
    for secret in secrets_seen:
        assert secret not in logged
    access = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    seen = {(entry["method"], entry["route"], entry["status"]) for entry in access}
    assert {
        ("POST", "/api/login", 200),
        ("POST", "/api/login", 401),
        ("GET", "/api/me", 200),
        ("GET", "/api/me", 401),
        ("GET", "/api/chats", 200),
        ("POST", "/api/logout", 200),
    } <= seen
    assert all(
        set(entry) <= {"ts", "remote", "method", "route", "path", "status", "seconds", "bytes"}
        for entry in access
    )
    assert all("?" not in entry.get("path", "") for entry in access)
    # Behind the trusted proxy (here, loopback), the client's address is logged, not the proxy's.
    assert [e["remote"] for e in access if e["route"] == "/healthz" and e["remote"] != "127.0.0.1"] == [
        "198.51.100.23"
    ]


def access_lines(logged: str) -> list[dict[str, object]]:
    """The access log's entries: every line that starts as JSON must be one whole object."""
    return [json.loads(line) for line in logged.splitlines() if line.startswith("{")]


async def test_a_burst_is_logged_whole_by_a_clean_stop(server: Server) -> None:
    """Access lines leave in batches (one write() for many): those still waiting when the
    server is stopped are written by the stop, each whole, none twice."""
    burst = 300
    async with aiohttp.ClientSession() as session:
        await wait_until_up(session, server.base)

        async def post(i: int) -> None:
            body = {"chat_id": 1, "contenido": f"ráfaga {i}", "username": "ana"}
            async with session.post(f"{server.base}/api/messages", json=body) as resp:
                assert resp.status == 201, await resp.text()

        await asyncio.gather(*(post(i) for i in range(burst)))
    # Stopped at once: the last lines have not reached their flush yet.
    posts = [e for e in access_lines(server.stop()) if e["route"] == "/api/messages"]
    assert len(posts) == burst
    assert all(e["method"] == "POST" and e["status"] == 201 for e in posts)


async def test_lines_are_written_while_the_server_runs(server: Server) -> None:
    """Buffered lines are written soon on their own, not only when a buffer fills or at a stop."""
    async with aiohttp.ClientSession() as session:
        await wait_until_up(session, server.base)
        async with session.get(f"{server.base}/api/openapi.json") as resp:
            assert resp.status == 200

        def logged() -> bool:
            text = server.log.read_text("utf-8", errors="replace")
            return any(e["route"] == "/api/openapi.json" for e in access_lines(text))

        await eventually(logged, "the request's access line is in the log")
    assert server.process.poll() is None  # written by the running server
