"""The values the API speaks in: users, chats and messages, and their JSON shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar, Literal

# Peru has kept UTC-05:00 without daylight saving since 1994, so a fixed offset is exact.
LIMA = timezone(timedelta(hours=-5), "America/Lima")

Role = Literal["admin", "user"]
ADMIN_USERNAME = "admin"
GENERAL_NAME = "General"


def lima_iso(moment: datetime) -> str:
    """ISO-8601 in Lima time, e.g. 2026-11-26T09:15:02-05:00."""
    return moment.astimezone(LIMA).isoformat()


def utc_now() -> datetime:
    # Both stores keep whole seconds (MySQL TIMESTAMP), so round here to answer the same.
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: Role
    estado: str
    creado_en: datetime

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "role": self.role,
            "estado": self.estado,
            "creado_en": lima_iso(self.creado_en),
        }

    def brief(self, online: set[int] | None = None) -> dict[str, Any]:
        """As a chat participant; with `online` known, whether the user is online."""
        brief: dict[str, Any] = {"id": self.id, "username": self.username, "role": self.role}
        if online is not None:
            brief["online"] = self.id in online
        return brief


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    chat_id: int
    sender_id: int
    username: str | None
    contenido: str
    timestamp: datetime
    # A DM's participant ids, which the hub routes the message to (their per-user streams);
    # empty for General, which reaches every per-user stream. Not part of the API's shape.
    members: tuple[int, ...] = field(default=(), compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        """From `announcement()` (or the API's shape, without members)."""
        moment = datetime.fromisoformat(data["timestamp"])
        members = tuple(data.get("members", ()))
        return cls(
            data["id"],
            data["chat_id"],
            data["sender_id"],
            data["username"],
            data["contenido"],
            moment,
            members,
        )

    def announcement(self) -> dict[str, Any]:
        """The API's shape plus the members: what other processes need to route it."""
        return {**self.to_json(), "members": list(self.members)}

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "chat_id": self.chat_id,
            "sender_id": self.sender_id,
            "username": self.username,
            "contenido": self.contenido,
            "timestamp": lima_iso(self.timestamp),
        }


@dataclass(frozen=True, slots=True)
class Chat:
    id: int
    type: Literal["general", "dm"]
    name: str | None
    participants: tuple[User, ...] = ()
    last_message: Message | None = field(default=None, compare=False)
    # The viewer's unread count, known only in a chat list (it differs per viewer).
    unread: int | None = field(default=None, compare=False)
    # In chat lists, a DM's participants' read markers (user id -> last_read_id): "Visto".
    reads: dict[int, int] | None = field(default=None, compare=False)

    @property
    def is_general(self) -> bool:
        return self.type == "general"

    def has_member(self, user_id: int) -> bool:
        # Everyone takes part in General, whether or not a participant row exists yet.
        return self.is_general or any(p.id == user_id for p in self.participants)

    def to_json(self, online: set[int] | None = None) -> dict[str, Any]:
        chat: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "name": self.name,
            "participants": [self._participant(p, online) for p in self.participants],
            "last_message": self.last_message.to_json() if self.last_message else None,
        }
        if self.unread is not None:
            chat["unread"] = self.unread
        return chat

    def _participant(self, user: User, online: set[int] | None) -> dict[str, Any]:
        brief = user.brief(online)
        if self.reads is not None:
            brief["last_read_id"] = self.reads.get(user.id, 0)
        return brief


@dataclass(frozen=True, slots=True)
class ReadMarker:
    """How far a user has read a chat, and how many messages of others are after it."""

    chat_id: int
    last_read_id: int
    unread: int

    def to_json(self) -> dict[str, Any]:
        return {"chat_id": self.chat_id, "last_read_id": self.last_read_id, "unread": self.unread}


@dataclass(frozen=True, slots=True)
class InboxPosition:
    """Where a page of a chat list ends: its last DM's newest message id and chat id (the list's
    order, both descending). Clients see it as the opaque `next_cursor` "<activity>.<chat id>"."""

    activity: int
    chat_id: int
    # Before every DM: where the DMs start when the first page held only General.
    TOP: ClassVar[InboxPosition]

    def token(self) -> str:
        return f"{self.activity}.{self.chat_id}"

    @classmethod
    def from_token(cls, token: str) -> InboxPosition:
        """The position of a `token()`; ValueError for anything else."""
        activity, dot, chat_id = token.partition(".")
        if not (
            dot and activity.isascii() and activity.isdigit() and chat_id.isascii() and chat_id.isdigit()
        ):
            raise ValueError(token)
        if len(activity) > 10 or len(chat_id) > 10:
            raise ValueError(token)
        return cls(int(activity), int(chat_id))


InboxPosition.TOP = InboxPosition(2**31, 0)
