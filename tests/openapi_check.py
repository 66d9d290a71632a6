"""Holding real responses to docs/openapi.json: every response the API suite gets is checked
against what the description says of its operation and status (JSON Schema 2020-12, as
OpenAPI 3.1 uses it)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import referencing
import referencing.jsonschema
from aiohttp import web

from chat_server import jsonutil
from chat_server.openapi import spec_bytes

SPEC_URI = "urn:chat-server:openapi"
# Methods aiohttp adds on its own (HEAD beside GET; OPTIONS for CORS preflight): not the API's.
IMPLICIT_METHODS = ("HEAD", "OPTIONS")


@functools.cache
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = jsonutil.loads(spec_bytes())
    return loaded


@functools.cache
def _registry() -> referencing.Registry[Any]:
    resource: referencing.Resource[Any] = referencing.Resource.from_contents(
        spec(), referencing.jsonschema.DRAFT202012
    )
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(SPEC_URI, resource)
    return registry


@functools.cache
def _validator(pointer: str) -> jsonschema.Draft202012Validator:
    """A validator for the schema at `pointer` in the description; its $refs resolve in it."""
    return jsonschema.Draft202012Validator(
        {"$ref": f"{SPEC_URI}#{pointer}"},
        registry=_registry(),
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _resolve(node: dict[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
    """A node that may be a local $ref, and the path to what it points to (if it was one)."""
    ref = node.get("$ref")
    if ref is None:
        return node, None
    parts = [p.replace("~1", "/").replace("~0", "~") for p in ref.removeprefix("#/").split("/")]
    target: Any = spec()
    for part in parts:
        target = target[part]
    return target, parts


def documented_routes() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in spec()["paths"].items() for method in item}


def app_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, route pattern) of every route the app serves, as the description names them."""
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method not in IMPLICIT_METHODS
    }


def response_problems(
    method: str, route: str, status: int, headers: dict[str, str], body: bytes | None
) -> list[str]:
    """What in this response the description does not allow (empty when it conforms)."""
    where = f"{method} {route} -> {status}"
    operation = spec()["paths"].get(route, {}).get(method.lower())
    if operation is None:
        return [f"{method} {route} is not in the description"]
    response = operation["responses"].get(str(status))
    if response is None:
        return [f"{where}: status not documented"]
    response, ref = _resolve(response)
    base = ref or ["paths", route, method.lower(), "responses", str(status)]
    problems = [
        f"{where}: header {name} missing"
        for name, header in response.get("headers", {}).items()
        if _resolve(header)[0].get("required") and name.lower() not in {h.lower() for h in headers}
    ]
    media = headers.get("Content-Type", "").split(";")[0].strip()
    content = response.get("content", {})
    if media not in content:
        return [*problems, f"{where}: content type {media!r} not documented (only {sorted(content)})"]
    if media == "application/json" and body is not None:
        validator = _validator(_pointer(*base, "content", media, "schema"))
        problems += [
            f"{where}: {'/'.join(map(str, e.absolute_path)) or 'body'}: {e.message}"
            for e in validator.iter_errors(jsonutil.loads(body))
        ]
    return problems


@dataclass
class ResponseRecorder:
    """Checks every response of the apps it is attached to; the problems are kept for the end."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)

    def attach(self, app: web.Application) -> None:
        app.on_response_prepare.append(self._on_response)

    async def _on_response(self, request: web.Request, response: web.StreamResponse) -> None:
        resource = request.match_info.route.resource
        if resource is None or request.method in IMPLICIT_METHODS:
            return  # no route matched (a 404 of aiohttp's router), or not an API method
        route = resource.canonical
        if (request.method, route) not in documented_routes() and response.status == 405:
            return  # a method the route does not have
        body = response.body if isinstance(response, web.Response) else None
        self.checked += 1
        try:
            self.problems += response_problems(
                request.method,
                route,
                response.status,
                dict(response.headers),
                body if isinstance(body, bytes) else None,
            )
        except Exception as exc:  # a broken description must fail the test, not the response
            self.problems.append(f"{request.method} {route}: cannot check: {exc!r}"[:500])
