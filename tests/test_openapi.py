"""docs/openapi.json describes the whole API: every route, and (through conftest's recorder,
which checks every response of the API suite) the shape of every answer."""

from __future__ import annotations

import schemathesis

import chat_server
from chat_server import jsonutil
from chat_server.app import create_app
from chat_server.settings import Settings

from .chat_client import ChatClient
from .openapi_check import ResponseRecorder, app_routes, documented_routes, response_problems, spec


def test_the_description_is_valid_openapi_3_1() -> None:
    schemathesis.openapi.from_dict(spec()).validate()
    assert spec()["openapi"].startswith("3.1.")
    assert spec()["info"]["version"] == chat_server.__version__


def test_every_route_is_described_and_every_described_route_exists() -> None:
    app = create_app(Settings(database_url="sqlite:///unused.sqlite3", secret="x"))
    served, described = app_routes(app), documented_routes()
    assert served - described == set(), "routes missing from docs/openapi.json"
    assert described - served == set(), "docs/openapi.json describes routes the app does not serve"


def test_every_operation_documents_its_errors_with_the_error_envelope() -> None:
    for path, item in spec()["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert response["$ref"].startswith("#/components/responses/"), (method, path, status)


async def test_the_served_description_is_the_file(client: ChatClient) -> None:
    async with client.http.get("/api/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert jsonutil.loads(await resp.read()) == spec()


async def test_the_recorder_checks_the_responses_of_the_suite(
    client: ChatClient, openapi_responses: ResponseRecorder
) -> None:
    await client.login("ana")
    await client.call("GET", "/api/me", params={"username": "nadie"}, status=404)
    assert openapi_responses.checked == 2
    assert openapi_responses.problems == []


def test_a_response_unlike_its_description_is_caught() -> None:
    user = {
        "id": 1,
        "username": "ana",
        "role": "user",
        "estado": "N/D",
        "creado_en": "2026-11-26T09:15:02-05:00",
    }
    json_headers = {"Content-Type": "application/json"}
    good = jsonutil.dumps({"user": user})
    assert response_problems("GET", "/api/me", 200, json_headers, good) == []
    extra = jsonutil.dumps({"user": {**user, "password": "x"}})
    assert response_problems("GET", "/api/me", 200, json_headers, extra)
    missing = jsonutil.dumps({"user": {k: v for k, v in user.items() if k != "role"}})
    assert response_problems("GET", "/api/me", 200, json_headers, missing)
    assert response_problems("GET", "/api/me", 418, json_headers, good)
    assert response_problems("GET", "/api/me", 200, {"Content-Type": "text/html"}, good)
    no_retry_after = jsonutil.dumps({"error": "too many messages", "retry_after": 3})
    assert response_problems("POST", "/api/messages", 429, json_headers, no_retry_after) == [
        "POST /api/messages -> 429: header Retry-After missing"
    ]
    assert response_problems("GET", "/api/nothing", 200, json_headers, good)
