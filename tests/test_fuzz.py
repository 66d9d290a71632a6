"""Property-based fuzzing of a real server (python run.py on the SQLite store) against
docs/openapi.json, with schemathesis: inputs that fit the description and inputs that break it,
for every operation but the event stream. No answer may be a 5xx, and every answer must be
as described (status, content type, headers, body). Bounded: EXAMPLES per operation and mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode, openapi
from schemathesis.checks import not_a_server_error
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .openapi_check import documented_routes, spec
from .services import free_port

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
# Examples per operation and generation mode: about 30 operation-modes, a few ms each.
EXAMPLES = int(os.environ.get("CHAT_FUZZ_EXAMPLES", "40"))
# A stream never ends: it is described, but not fuzzed.
NOT_FUZZED = {("GET", "/api/stream")}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SCHEMA = openapi.from_dict(spec())


def _can_be_wrong(method: str, path: str) -> bool:
    """Whether an input can break the description (a body, or a parameter more constrained
    than any string): else there are no negative cases to generate."""
    operation = spec()["paths"][path][method.lower()]
    parameters = [
        spec()["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p
        for p in operation.get("parameters", [])
    ]
    return "requestBody" in operation or any(p["schema"] != {"type": "string"} for p in parameters)


CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in sorted(documented_routes() - NOT_FUZZED)
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _can_be_wrong(method, path)
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python run.py` on a free port, with a fresh SQLite database."""
    folder = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{folder}/chat.sqlite3", "CHAT_SECRET": "fuzz"}
    env.pop("REDIS_URL", None)
    with (folder / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "run.py", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, process)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.05)  # the process is starting: nothing to wait on but its port
    raise RuntimeError(f"the server did not answer within {START_TIMEOUT}s")


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_fuzz(server: str, method: str, path: str, mode: GenerationMode) -> None:
    operation = SCHEMA[path][method.lower()]
    with requests.Session() as session:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: Case[Any]) -> None:
            response = case.call(base_url=server, session=session, timeout=10)
            case.validate_response(response, checks=CHECKS)

        fuzz()
