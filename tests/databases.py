"""Throwaway MariaDB databases for the tests: made per test, dropped after it."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pymysql
import pytest

SERVER_URL = os.environ.get("CHAT_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")
HOST, PORT = "127.0.0.1", 3306
PREFIX = f"chat_test_{os.getpid()}_"
_numbers = itertools.count()
_unavailable: list[str] = []


def _connect(database: str | None = None) -> pymysql.connections.Connection:
    return pymysql.connect(host=HOST, port=PORT, user="root", database=database, connect_timeout=3)


def require_mysql() -> None:
    """Skip without MariaDB on a laptop; in CI (CI=true) a missing MariaDB fails the run."""
    if not _unavailable:
        try:
            _connect().close()
            _unavailable.append("")
        except pymysql.err.OperationalError as exc:
            _unavailable.append(f"MariaDB not reachable at {HOST}:{PORT}: {exc}")
    reason = _unavailable[0]
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run the MariaDB suite)", pytrace=False)
        pytest.skip(reason)


@contextmanager
def throwaway_database() -> Iterator[str]:
    """The URL of a database that does not exist yet (the server creates it); dropped after."""
    require_mysql()
    name = f"{PREFIX}{next(_numbers)}"
    try:
        yield f"{SERVER_URL}/{name}"
    finally:
        conn = _connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


def run_sql(database: str, statements: list[str]) -> None:
    conn = _connect(database)
    try:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
        conn.commit()
    finally:
        conn.close()


def create_database(name: str) -> None:
    conn = _connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
