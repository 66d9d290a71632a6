"""The inbox scenario of `make bench`: an admin with 100,000 customers, each with a DM of 10
messages (1,000,000 messages), on MariaDB and on SQLite.

The data is written by a bulk loader straight into the tables (not 100,000 HTTP calls); the
server then starts on it and fills its own inbox table at start-up (the migration backfill, timed).
Measured over HTTP on one keep-alive connection, sequentially: the admin's first page and every
later page (walking the whole inbox), search by name prefix, search by words, the per-user
stream's connect-to-first-byte and a customer's message reaching it, and the server's memory per
open admin stream.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pymysql

from chat_server.names import name_key

CUSTOMERS = 100_000
PER_DM = 10
FIRST_NAMES = [
    "maria",
    "jose",
    "juan",
    "ana",
    "luis",
    "carmen",
    "carlos",
    "rosa",
    "jorge",
    "lucia",
    "pedro",
    "elena",
    "miguel",
    "sofia",
    "david",
    "julia",
    "manuel",
    "laura",
    "pablo",
    "marta",
    "diego",
    "paula",
    "andres",
    "sara",
    "javier",
    "clara",
    "raul",
    "isabel",
    "sergio",
    "teresa",
    "alberto",
    "victoria",
    "fernando",
    "daniela",
    "ricardo",
    "gabriela",
    "hector",
    "valeria",
    "oscar",
    "natalia",
]
SYLLABLES = ("ta", "lo", "mi", "re", "su", "ka", "no", "pe", "di", "bu", "fa", "go")
ROWS_PER_STATEMENT = 5000
QUERIES = 300


def customer_name(n: int) -> str:
    return f"{FIRST_NAMES[n % len(FIRST_NAMES)]}{n:06d}"


def vocabulary() -> list[str]:
    """5,000 made-up words of four syllables: each in about 400 of the 1,000,000 messages."""
    rng = random.Random(7)
    words: set[str] = set()
    while len(words) < 5000:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(4)))
    return sorted(words)


def messages(chats: Sequence[tuple[int, int]], admin_id: int) -> Iterator[tuple[int, int, str]]:
    """Ten per DM, in rounds (so activity interleaves): customers write 7, the admin answers 3."""
    rng, words = random.Random(11), vocabulary()
    for round_ in range(PER_DM):
        for chat_id, customer_id in chats:
            sender = admin_id if round_ in (2, 5, 8) else customer_id
            text = f"hola, sobre el pedido {rng.randrange(100000)}: {rng.choice(words)} {rng.choice(words)}"
            yield chat_id, sender, text


def _chunks(rows: Iterator[tuple[Any, ...]] | Sequence[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == ROWS_PER_STATEMENT:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Loader:
    """Bulk inserts for one store: `execute(sql, rows)` runs a multi-row INSERT (%s style)."""

    def __init__(
        self, execute: Callable[[str, list[tuple[Any, ...]]], None], query: Callable[[str], list[Any]]
    ):
        self.execute = execute
        self.query = query

    def insert(self, into: str, rows: Iterator[tuple[Any, ...]] | Sequence[tuple[Any, ...]]) -> None:
        for chunk in _chunks(rows):
            marks = "(" + ", ".join(["%s"] * len(chunk[0])) + ")"
            self.execute(f"INSERT INTO {into} VALUES " + ", ".join([marks] * len(chunk)), chunk)

    def load(self) -> None:
        (admin_id,), (general_id,) = (
            self.query("SELECT id FROM usuarios WHERE name_key = 'admin'"),
            self.query("SELECT id FROM chats WHERE type = 'general'"),
        )
        if self.query("SELECT COUNT(*) FROM usuarios")[0] > CUSTOMERS:
            return  # loaded by an earlier run
        names = [customer_name(n) for n in range(CUSTOMERS)]
        self.insert("usuarios (username, name_key)", ((n, name_key(n)) for n in names))
        users = self.query(f"SELECT id FROM usuarios WHERE id <> {admin_id} ORDER BY id")
        self.insert("chats (type)", [("dm",)] * CUSTOMERS)
        chats = self.query("SELECT id FROM chats WHERE type = 'dm' ORDER BY id")
        pairs = list(zip(chats, users, strict=True))
        self.insert("chat_participants (chat_id, user_id)", ((c, u) for c, u in pairs))
        self.insert("chat_participants (chat_id, user_id)", ((c, admin_id) for c, _ in pairs))
        self.insert("chat_participants (chat_id, user_id)", ((general_id, u) for u in users))
        self.insert("dm_pairs (user_low, user_high, chat_id)", ((admin_id, u, c) for c, u in pairs))
        self.insert("mensajes_v2 (chat_id, sender_id, contenido)", messages(pairs, admin_id))


def connect_mysql(server: str, database: str) -> pymysql.connections.Connection:
    """A plain pymysql connection (autocommit) to `database` on the server of a mysql:// URL."""
    parts = urlsplit(server)
    return pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=database,
        autocommit=True,
        charset="utf8mb4",
    )


def load_mysql(url: str) -> None:
    server, _, database = url.rpartition("/")
    conn = connect_mysql(server, database)
    with conn.cursor() as cur:

        def execute(sql: str, rows: list[tuple[Any, ...]]) -> None:
            cur.execute(sql, [v for row in rows for v in row])

        def query(sql: str) -> list[Any]:
            cur.execute(sql)
            return [row[0] for row in cur.fetchall()]

        Loader(execute, query).load()
        for table in ("usuarios", "chats", "chat_participants", "mensajes_v2", "dm_pairs"):
            cur.execute(f"ANALYZE TABLE {table}")
    conn.close()


def load_sqlite(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)

    def execute(sql: str, rows: list[tuple[Any, ...]]) -> None:
        conn.execute(sql.replace("%s", "?"), [v for row in rows for v in row])

    def query(sql: str) -> list[Any]:
        return [row[0] for row in conn.execute(sql)]

    conn.execute("BEGIN")
    Loader(execute, query).load()
    conn.execute("COMMIT")
    conn.close()


# -- measuring -----------------------------------------------------------------------------


def quantiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"count": len(ordered), "p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1], 2)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


ADMIN = {"X-Username": "admin"}


async def _timed_get(session: aiohttp.ClientSession, url: str, **params: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    async with session.get(url, params=params, headers=ADMIN) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise SystemExit(f"inbox bench: {url} {params} answered {resp.status} {body}")
    return (time.perf_counter() - started) * 1000, body


async def measure(base: str, pid: int) -> dict[str, Any]:
    rng = random.Random(3)
    result: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        firsts = [(await _timed_get(session, f"{base}/api/chats", limit=50))[0] for _ in range(QUERIES)]
        result["first_page_ms"] = quantiles(firsts)
        later: list[float] = []
        seen: set[int] = set()
        cursor = (await _timed_get(session, f"{base}/api/chats", limit=50))[1]["next_cursor"]
        while cursor is not None:
            took, body = await _timed_get(session, f"{base}/api/chats", limit=50, cursor=cursor)
            later.append(took)
            seen.update(c["id"] for c in body["chats"])
            cursor = body["next_cursor"]
        result["later_pages_ms"] = quantiles(later)
        result["dms_walked"] = len(seen) + 49
        prefixes = [rng.choice(FIRST_NAMES)[: rng.randint(3, 6)] for _ in range(QUERIES // 2)]
        prefixes += [customer_name(rng.randrange(CUSTOMERS))[:-2] for _ in range(QUERIES // 2)]
        names = [(await _timed_get(session, f"{base}/api/chats", q=p, limit=20))[0] for p in prefixes]
        result["name_search_ms"] = quantiles(names)
        words = vocabulary()
        found = [
            await _timed_get(session, f"{base}/api/search", q=rng.choice(words), limit=20)
            for _ in range(QUERIES)
        ]
        result["message_search_ms"] = quantiles([took for took, _ in found])
        result["message_search_hits"] = sum(len(body["messages"]) for _, body in found) / len(found)
        result.update(await _streams(session, base, pid, rng))
    return result


async def _streams(session: aiohttp.ClientSession, base: str, pid: int, rng: random.Random) -> dict[str, Any]:
    connects = []
    for _ in range(100):
        started = time.perf_counter()
        async with session.get(f"{base}/api/stream", headers=ADMIN) as resp:
            await resp.content.readany()
            connects.append((time.perf_counter() - started) * 1000)
    arrived: dict[int, float] = {}
    got = asyncio.Event()
    async with session.get(f"{base}/api/stream", headers=ADMIN) as stream:
        await stream.content.readany()

        async def read() -> None:
            async for line in stream.content:
                if line.startswith(b"id: "):
                    arrived[int(line[4:])] = time.perf_counter()
                    got.set()

        reader = asyncio.create_task(read())
        sent: dict[int, float] = {}
        for _ in range(300):
            n = rng.randrange(CUSTOMERS)
            body = {"chat_id": await _dm_of(session, base, n), "contenido": "una pregunta"}
            started = time.perf_counter()
            async with session.post(
                f"{base}/api/messages", json={**body, "username": customer_name(n)}
            ) as resp:
                message = (await resp.json())["message"]
            sent[message["id"]] = started
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 10
        while set(sent) - set(arrived) and time.monotonic() < deadline:
            got.clear()
            await asyncio.wait_for(got.wait(), 10)
        reader.cancel()
    deliveries = [(arrived[i] - sent[i]) * 1000 for i in sent if i in arrived]
    before = rss_mb(pid)
    streams = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as many:
        for _ in range(200):
            resp = await many.get(f"{base}/api/stream", headers=ADMIN)
            await resp.content.readany()
            streams.append(resp)
        after = rss_mb(pid)
        for resp in streams:
            resp.close()
    return {
        "stream_connect_ms": quantiles(connects),
        "delivery_ms": quantiles(deliveries),
        "delivered": f"{len(deliveries)}/{len(sent)}",
        "admin_stream_kb": round((after - before) * 1024 / len(streams), 1),
        "server_rss_mb": round(after, 1),
    }


_dm_cache: dict[int, int] = {}


async def _dm_of(session: aiohttp.ClientSession, base: str, n: int) -> int:
    """The customer's DM with admin (their chat list's second chat)."""
    if n not in _dm_cache:
        async with session.get(f"{base}/api/chats", headers={"X-Username": customer_name(n)}) as resp:
            body = await resp.json()
        _dm_cache[n] = next(c["id"] for c in body["chats"] if c["type"] == "dm")
    return _dm_cache[n]
