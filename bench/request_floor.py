"""What one request costs this machine's CPU before any of the chat's own work: the floor under
the "CPU per post" row of docs/benchmarks.md.

Two servers, one after the other, each its own process: a bare aiohttp application on uvloop
whose one handler reads the body and answers 201 with a small JSON (no database, no access log),
and the chat server (`run.py`, one worker, MariaDB, limits off) storing each post in General.
The same client posts to each, at a fixed rate and then back to back (one in flight); the
server's CPU per request is read from /proc over the posts alone.

    python bench/request_floor.py [--posts 2000] [--rate 200] [--mysql mysql://root@127.0.0.1:3306]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from chat_server.loadtest import NO_LIMITS

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 50


def bare_app(port: int) -> None:
    """The floor: aiohttp and uvloop, a JSON body read and a JSON answer."""
    import uvloop

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"message": {"id": 1, "chat_id": 1, "contenido": "x" * 40}}, status=201)

    app = web.Application()
    app.router.add_post("/api/messages", handle)
    web.run_app(app, port=port, access_log=None, loop=uvloop.new_event_loop(), print=None)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_up(base: str, process: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}")
            try:
                async with session.post(f"{base}/api/login", json={"username": "piso"}):
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)  # still starting: nothing to wait on but its port
    raise SystemExit("the server did not start")


async def ms_per_request(base: str, pid: int, posts: int, rate: float) -> float:
    """Server CPU per POST /api/messages, at `rate` per second (0: back to back)."""
    body = {"chat_id": 1, "contenido": "hola"}  # General is chat 1 of a new database
    headers = {"X-Username": "piso"}
    async with aiohttp.ClientSession() as session:

        async def post() -> None:
            async with session.post(f"{base}/api/messages", json=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 201:
                    raise SystemExit(f"{base}: {resp.status} {await resp.text()}")

        for _ in range(WARM_UP):
            await post()
        started, cpu = time.perf_counter(), cpu_seconds(pid)
        for n in range(posts):
            if rate and (wait := started + n / rate - time.perf_counter()) > 0:
                await asyncio.sleep(wait)  # the schedule of a steady load
            await post()
        return 1000 * (cpu_seconds(pid) - cpu) / posts


def measure(name: str, command: list[str], env: dict[str, str], posts: int, rate: float) -> None:
    port = 18_000 + os.getpid() % 1000
    process = subprocess.Popen(
        [*command, str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_up(base, process))
        for each in (rate, 0.0):
            ms = asyncio.run(ms_per_request(base, process.pid, posts, each))
            pace = f"{each:.0f}/s" if each else "back to back"
            print(f"{name:12} {pace:>12}: {ms:.3f} ms of server CPU a request", flush=True)
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--mysql", default="mysql://root@127.0.0.1:3306")
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)  # the bare server's own process
    args = parser.parse_args()
    if args.serve_bare:
        bare_app(args.serve_bare)
        return
    database = f"chat_floor_{os.getpid()}"
    subprocess.run(["mysql", "-uroot", "-e", f"DROP DATABASE IF EXISTS {database}"], check=False)
    measure(
        "bare aiohttp", [sys.executable, __file__, "--serve-bare"], dict(os.environ), args.posts, args.rate
    )
    chat_env = {**os.environ, **NO_LIMITS, "DATABASE_URL": f"{args.mysql}/{database}"}
    chat_env.pop("REDIS_URL", None)
    measure("chat server", [sys.executable, "run.py", "--port"], chat_env, args.posts, args.rate)
    subprocess.run(["mysql", "-uroot", "-e", f"DROP DATABASE IF EXISTS {database}"], check=False)


if __name__ == "__main__":
    main()
