"""Waiting for a condition with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .chat_client import WAIT


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Return as soon as `condition()` holds; fail the test if it does not within WAIT seconds.

    For state the server changes without an event to await (a handler task ending after its
    client hung up), checking after each short pause is the only way to observe it.
    """
    try:
        async with asyncio.timeout(WAIT):
            while not condition():  # noqa: ASYNC110 - no event exists for these conditions
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None
