"""Storage: one interface (`Store`), a MySQL/MariaDB backend and an embedded SQLite one."""

from __future__ import annotations

from .base import DEFAULT_CHATS_PAGE, DEFAULT_PAGE, MAX_PAGE, Store, store_key

__all__ = ["DEFAULT_CHATS_PAGE", "DEFAULT_PAGE", "MAX_PAGE", "Store", "open_store", "store_key"]


def open_store(url: str) -> Store:
    """The backend named by the URL's scheme, imported only when used."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("mysql", "mariadb", "mysql+aiomysql"):
        from .mysql import MysqlStore

        return MysqlStore(url)
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(url)
    raise SystemExit(f"DATABASE_URL: unsupported scheme {scheme!r} (use mysql:// or sqlite:///)")
