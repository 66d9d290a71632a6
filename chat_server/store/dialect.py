"""What differs between MariaDB and Oracle MySQL 8, in one place.

The rest of the store writes SQL that both servers accept (checked by tests/test_dialect.py
against a MySQL 8 version string). What remains different is named here:

- `INSERT ... RETURNING` (MariaDB >= 10.5 only): with it, concurrent posts share one multi-row
  INSERT; without it, each row is its own INSERT and its id is `LAST_INSERT_ID()`, still in one
  transaction (one commit) per batch. docs/design.md argues why MySQL 8 gets no multi-row INSERT.
- `CREATE INDEX IF NOT EXISTS` and `ADD COLUMN IF NOT EXISTS` (MariaDB only): the schema files
  write the plain forms and the migrator runs each only when `information_schema` lacks the index
  or column (`schema_files.added_object`), on either server.

The server is detected with `SELECT VERSION()`, whose text contains "MariaDB" on MariaDB only.
A database URL may force a dialect with `?dialect=mysql8` (or `mariadb`): the tests run the MySQL 8
path on MariaDB this way, which accepts every MySQL 8 form used here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

DialectName = Literal["mariadb", "mysql8"]
DIALECTS: tuple[DialectName, ...] = ("mariadb", "mysql8")
# The oldest servers the schema and statements are written for (README, "Databases").
MIN_MARIADB = (10, 6)
MIN_MYSQL = (8, 0)
# The one MariaDB-only clause the store writes: only where `Store.returning` is true, that is on
# MariaDB and on SQLite >= 3.35, which has it too.
RETURNING_ID = " RETURNING id"


@dataclass(frozen=True)
class Dialect:
    name: DialectName
    version: str  # as the server reports it

    @property
    def returning(self) -> bool:
        """Whether INSERT ... RETURNING gives back the ids of a multi-row insert."""
        return self.name == "mariadb"


def detect(version: str, forced: str | None = None) -> Dialect:
    """The dialect of a server that answered `SELECT VERSION()` with `version`. Servers older than
    the supported ones are refused at start-up rather than failing later on one statement."""
    mariadb = "mariadb" in version.lower()
    numbers = _version_numbers(version)
    oldest = MIN_MARIADB if mariadb else MIN_MYSQL
    if numbers < oldest:
        product = "MariaDB" if mariadb else "MySQL"
        raise SystemExit(
            f"{product} {version} is not supported: use MariaDB >= 10.6 or MySQL >= 8.0 (README, Databases)"
        )
    if forced is None:
        return Dialect("mariadb" if mariadb else "mysql8", version)
    name = _named(forced)
    if name == "mariadb" and not mariadb:
        raise SystemExit("DATABASE_URL: dialect=mariadb on a MySQL server")
    return Dialect(name, version)


def _named(text: str) -> DialectName:
    for name in DIALECTS:
        if name == text:
            return name
    raise SystemExit(f"DATABASE_URL: unknown dialect {text!r} (use one of {', '.join(DIALECTS)})")


def _version_numbers(version: str) -> tuple[int, int]:
    """'10.11.6-MariaDB-0+deb12u1' -> (10, 11); '8.0.36' -> (8, 0); MariaDB behind a MySQL 5.5
    compatibility prefix ('5.5.5-10.6.12-MariaDB') -> (10, 6)."""
    text = version.removeprefix("5.5.5-")
    found = re.match(r"(\d+)\.(\d+)", text)
    if found is None:
        raise SystemExit(f"unrecognised database version {version!r}")
    return int(found[1]), int(found[2])
