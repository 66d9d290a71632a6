"""The event loop every process of ours runs on: uvloop where it is installed, else asyncio's own.

uvloop is an optional dependency (it does not build on Windows): it makes request parsing and
connection setup faster, and nothing here depends on it.
"""

from __future__ import annotations

import asyncio


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
