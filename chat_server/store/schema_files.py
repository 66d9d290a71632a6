"""The schema files: where they are (`sql/` in a source tree, or the installed copy of it), their
statements, and which of them add an index or a column.

A statement that adds an index or a column is run only when the database lacks that index or
column, on every backend. So a schema change is one plain, portable statement in the file:

    CREATE INDEX idx_name ON some_table (a, b);
    ALTER TABLE some_table ADD COLUMN c INT NULL;
    ALTER TABLE some_table ADD FULLTEXT INDEX ft_name (text_column);

MariaDB's `IF NOT EXISTS` forms of these are not valid on MySQL 8 (see store/dialect.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

_SOURCE_TREE = Path(__file__).resolve().parents[2] / "sql"
_NAME = r"`?(\w+)`?"
_CREATE_INDEX = re.compile(
    rf"CREATE\s+(?:UNIQUE\s+|FULLTEXT\s+|SPATIAL\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}\s+ON\s+{_NAME}",
    re.IGNORECASE,
)
_ALTER_ADD = re.compile(rf"ALTER\s+TABLE\s+{_NAME}\s+ADD\s+(.*)", re.IGNORECASE | re.DOTALL)
_ADD_COLUMN = re.compile(rf"COLUMN\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}", re.IGNORECASE)
_ADD_INDEX = re.compile(
    rf"(?:UNIQUE\s+|FULLTEXT\s+|SPATIAL\s+)?(?:INDEX|KEY)\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}", re.IGNORECASE
)


@dataclass(frozen=True)
class Added:
    """The index or column a schema statement adds."""

    kind: Literal["index", "column"]
    table: str
    name: str


def added_object(sql: str) -> Added | None:
    """What `sql` adds, if it adds an index or a column; None for any other statement.

    An ALTER TABLE ... ADD must add one named index or column (`ADD COLUMN c ...`,
    `ADD [UNIQUE|FULLTEXT] INDEX name ...`): anything else could not be checked before it runs."""
    text = sql.strip()
    created = _CREATE_INDEX.match(text)
    if created:
        return Added("index", created[2], created[1])
    altered = _ALTER_ADD.match(text)
    if altered is None:
        return None
    table, clause = altered[1], altered[2]
    if _top_level_comma(clause):
        raise ValueError(f"one ADD per ALTER TABLE, so that each can be checked first: {sql!r}")
    column = _ADD_COLUMN.match(clause)
    if column:
        return Added("column", table, column[1])
    index = _ADD_INDEX.match(clause)
    if index:
        return Added("index", table, index[1])
    raise ValueError(f"ALTER TABLE ... ADD must name a COLUMN or an INDEX: {sql!r}")


def _top_level_comma(clause: str) -> bool:
    """A comma outside parentheses and quotes: `ADD COLUMN a INT, ADD COLUMN b INT`."""
    unquoted = re.sub(r"'(?:[^'\\]|\\.|'')*'", "''", clause)
    depth = 0
    for char in unquoted:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            return True
    return False


def schema_file(dialect: str, name: str) -> Path:
    if _SOURCE_TREE.is_dir():
        return _SOURCE_TREE / dialect / name
    # `pip install .` ships sql/ as the package chat_server.sql (see setup.cfg).
    return Path(str(resources.files("chat_server.sql") / dialect / name))


def statements(dialect: str, name: str) -> list[str]:
    """Statements end with ';' at the end of a line; '--' lines are comments."""
    text = schema_file(dialect, name).read_text("utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    chunks = "\n".join(lines).split(";\n")
    return [c.strip().rstrip(";") for c in chunks if c.strip().rstrip(";")]
