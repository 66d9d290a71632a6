"""The SQL the server sends, recorded, and what in it MySQL 8.0 would refuse.

Recording wraps aiomysql's cursor, through which every statement of the MySQL store goes (the
pool's and the one-off connection that creates the database); the statement text is recorded
before parameters are bound. Patterns name MariaDB extensions that MySQL 8.0's manual does not
have (docs/design.md, "MySQL 8 and MariaDB").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import aiomysql

MARIADB_ONLY = {
    "INSERT/DELETE ... RETURNING": r"\bRETURNING\b",
    "CREATE INDEX IF NOT EXISTS": r"\bCREATE\s+(?:\w+\s+)?INDEX\s+IF\s+NOT\s+EXISTS\b",
    "ADD ... IF NOT EXISTS": r"\bADD\s+(?:COLUMN\s+|(?:\w+\s+)?(?:INDEX|KEY)\s+)?IF\s+NOT\s+EXISTS\b",
    "DROP INDEX/COLUMN IF EXISTS": r"\bDROP\s+(?:INDEX|KEY|COLUMN)\s+IF\s+EXISTS\b",
    "SET STATEMENT ... FOR": r"\bSET\s+STATEMENT\b",
    "max_statement_time": r"\bmax_statement_time\b",
    "CREATE OR REPLACE other than a view": r"\bCREATE\s+OR\s+REPLACE\s+(?!(?:ALGORITHM\b.*?\s+)?VIEW\b)",
    "sequences": r"\b(?:CREATE\s+SEQUENCE|NEXTVAL\s*\(|NEXT\s+VALUE\s+FOR)\b",
    "LIMIT ROWS EXAMINED": r"\bROWS\s+EXAMINED\b",
    "KILL QUERY ID": r"\bKILL\s+(?:HARD\s+|SOFT\s+)?QUERY\s+ID\b",
    "EXCEPT/INTERSECT (MySQL >= 8.0.31 only)": r"\b(?:EXCEPT|INTERSECT)\b",
    # utf8mb4_bin (usuarios.username and name_key compare bytes) is on both servers too.
    "a collation other than utf8mb4_unicode_ci or utf8mb4_bin": (
        r"\bCOLLATE\s*=?\s*(?!utf8mb4_unicode_ci\b|utf8mb4_bin\b)\w+"
    ),
    "a charset other than utf8mb4": r"\b(?:CHARACTER\s+SET|CHARSET)\s*=?\s*(?!utf8mb4\b)\w+",
}
_PATTERNS = {name: re.compile(pattern, re.IGNORECASE | re.DOTALL) for name, pattern in MARIADB_ONLY.items()}
_KEYWORD = re.compile(r"\b(SELECT|FROM|WHERE)\b|[()]", re.IGNORECASE)
# Words MySQL 8.0 made reserved (the manual's "Keywords and Reserved Words in MySQL 8.0", marked
# added in 8.0 and (R)): unquoted, none may name a table, a column or an alias.
MYSQL8_RESERVED = frozenset(
    [
        "CUBE",
        "CUME_DIST",
        "DENSE_RANK",
        "EMPTY",
        "EXCEPT",
        "FIRST_VALUE",
        "FUNCTION",
        "GROUPING",
        "GROUPS",
        "INTERSECT",
        "JSON_TABLE",
        "LAG",
        "LAST_VALUE",
        "LATERAL",
        "LEAD",
        "NTH_VALUE",
        "NTILE",
        "OF",
        "OVER",
        "PERCENT_RANK",
        "RANK",
        "RECURSIVE",
        "ROW",
        "ROWS",
        "ROW_NUMBER",
        "SYSTEM",
        "WINDOW",
    ]
)
# Where a statement names something: a table made or altered, a column defined or added, an alias.
_NAMED = re.compile(
    r"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)"
    r"|\bALTER\s+TABLE\s+(\w+)"
    r"|\bADD\s+COLUMN\s+(\w+)"
    r"|\bAS\s+(\w+)"
    r"|[(,]\s*(\w+)\s+(?:BIG|TINY|SMALL|MEDIUM)?(?:INT|INTEGER|VARCHAR|TEXT|TIMESTAMP|DATETIME|ENUM|CHAR|BOOL)\b",
    re.IGNORECASE,
)


def mariadb_only(sql: str) -> list[str]:
    """The MariaDB-only forms `sql` uses, by name; empty when MySQL 8.0 accepts it."""
    found = [name for name, pattern in _PATTERNS.items() if pattern.search(sql)]
    if _select_where_without_from(sql):
        found.append("SELECT ... WHERE without FROM (MySQL 8.0 wants FROM DUAL)")
    names = {name.upper() for match in _NAMED.finditer(sql) for name in match.groups() if name}
    found += [f"{word}: reserved in MySQL 8.0" for word in sorted(names & MYSQL8_RESERVED)]
    return found


def _select_where_without_from(sql: str) -> bool:
    """A SELECT whose own WHERE (same parenthesis depth) comes before any FROM of its own."""
    open_selects: list[int] = []  # depth of each SELECT still looking for its FROM
    depth = 0
    for match in _KEYWORD.finditer(sql):
        token = match.group(0).upper()
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
            open_selects = [d for d in open_selects if d <= depth]
        elif token == "SELECT":
            open_selects.append(depth)
        elif open_selects and open_selects[-1] == depth:
            if token == "WHERE":
                return True
            open_selects.pop()  # FROM
    return False


def recording() -> AbstractContextManager[list[str]]:
    """Every statement text sent through an aiomysql cursor while the block runs."""
    return _recorded(aiomysql.Cursor, "execute", lambda query, args=None: query)


def commands() -> AbstractContextManager[list[str]]:
    """Every command the driver sends while the block runs, one round trip each: the statements,
    and the BEGIN and COMMIT that aiomysql sends without a cursor."""
    return _recorded(
        aiomysql.Connection,
        "_execute_command",
        lambda command, sql: sql if isinstance(sql, str) else sql.decode(errors="replace"),
    )


@contextmanager
def _recorded(owner: type, method: str, text: Callable[..., str]) -> Iterator[list[str]]:
    """`owner.method` wrapped while the block runs: what `text` makes of each call's arguments."""
    seen: list[str] = []
    original = getattr(owner, method)

    async def recorded(self: Any, *args: Any) -> Any:
        seen.append(text(*args))
        return await original(self, *args)

    setattr(owner, method, recorded)
    try:
        yield seen
    finally:
        setattr(owner, method, original)
