"""uvloop is optional: the server runs on asyncio's own loop where uvloop is not installed."""

from __future__ import annotations

import asyncio
import sys

import pytest

from chat_server.eventloop import new_event_loop


def test_without_uvloop_the_standard_loop_runs_the_server_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` sees where it is absent
    loop = new_event_loop()
    try:
        assert type(loop).__module__.startswith("asyncio.")
        assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
    finally:
        loop.close()


def test_with_uvloop_installed_it_is_used() -> None:
    uvloop = pytest.importorskip("uvloop")
    loop = new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
