"""API errors: raised anywhere, rendered as one JSON envelope by `error_middleware`."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .jsonutil import json_response

log = logging.getLogger(__name__)


class ApiError(Exception):
    status = 400

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class RequestTimeout(ApiError):
    """The body did not arrive in time; the connection is closed after the answer."""

    status = 408


class Conflict(ApiError):
    status = 409


class TooManyRequests(ApiError):
    """A rate limit or the stream cap: retry after `retry_after` seconds (sent as Retry-After)."""

    status = 429

    def __init__(self, message: str, retry_after: float, **extra: Any) -> None:
        # Whole seconds, at least 1: Retry-After takes an integer and 0 would invite a busy loop.
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(message, retry_after=self.retry_after, **extra)


class Unavailable(ApiError):
    """A dependency (database, broker) does not answer; the client may retry."""

    status = 503


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else None
        response = json_response({"error": exc.message, **exc.extra}, status=exc.status, headers=headers)
        if isinstance(exc, RequestTimeout):
            response.force_close()  # the rest of the body may still be trickling in
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Routing 404/405 and aiohttp's 413 get the same envelope as our own errors.
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return json_response({"error": exc.reason}, status=exc.status, headers=headers)
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        # A body that is not what its headers say (a Content-Encoding that lies, a broken
        # multipart part header): the request is at fault, whatever aiohttp calls it.
        log.info("unreadable request body in %s %s: %r", request.method, request.path, exc)
        return json_response({"error": "the request body cannot be read"}, status=400)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_response({"error": "internal server error"}, status=500)
