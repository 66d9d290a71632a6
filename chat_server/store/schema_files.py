"""Where the schema files are: `sql/` in a source tree, or the installed copy of it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_SOURCE_TREE = Path(__file__).resolve().parents[2] / "sql"


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
