"""The one table from a GatewayError to what the client receives: an HTTP
answer (JSON body, status, headers) or raw bytes for the HTTP parser (the
SSE error event is app.completion.sse's); and the one place a rejection is counted.

Every refusal goes through `Rejections.reject`: the route handlers (through
the exception handlers installed here), API keys, the body limit and the
header limits alike.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from app.completion.validation import describe
from app.errors import GatewayError, InvalidRequest, MethodNotAllowed, RouteNotFound
from app.observability.metrics import Metrics
from app.scopes import RECORD

logger = logging.getLogger(__name__)


def error_response(exc: GatewayError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


def raw_response(exc: GatewayError) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection (for the parser level)."""
    body = json.dumps(exc.body()).encode()
    head = (
        f"HTTP/1.1 {int(exc.status)} {exc.status.phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class Rejections:
    """Counts each refusal once, by its reason, and answers it."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def count(self, exc: GatewayError) -> None:
        if exc.reason is not None:
            self.metrics.rejected.labels(self.metrics.model, exc.reason).inc()

    def reject(self, exc: GatewayError, scope: Scope | None = None) -> JSONResponse:
        """Count and answer; a request's record (usage log, trace) is told too."""
        self.count(exc)
        record = scope.get(RECORD) if scope is not None else None
        if record is not None:
            record.rejected(exc)
        return error_response(exc)

    async def send(self, exc: GatewayError, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer an ASGI request with the refusal (for middleware)."""
        await self.reject(exc, scope)(scope, receive, send)


def install_error_handlers(app: FastAPI, rejections: Rejections) -> None:
    def reject_for(request: Request, exc: GatewayError) -> JSONResponse:
        return rejections.reject(exc, request.scope)

    @app.exception_handler(GatewayError)
    async def _gateway(request: Request, exc: GatewayError) -> JSONResponse:
        return reject_for(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type.lower():
            # FastAPI parses a body as JSON only when it is declared so, which
            # keeps browsers from posting without a CORS preflight; `curl -d`
            # declares a form.
            message = "The request body must be JSON, sent with 'Content-Type: application/json'."
            return reject_for(request, InvalidRequest(message))
        message, param = describe(list(exc.errors()))
        return reject_for(request, InvalidRequest(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == HTTPStatus.NOT_FOUND:
            return reject_for(request, RouteNotFound("No such route."))
        if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
            return reject_for(request, MethodNotAllowed("Method not allowed for this route."))
        if exc.status_code == HTTPStatus.BAD_REQUEST:
            # FastAPI's only 400: a body its JSON parser gave up on (e.g. too deeply nested).
            return reject_for(request, InvalidRequest("Request body could not be parsed as JSON."))
        err = GatewayError(HTTPStatus(exc.status_code).phrase)
        err.status = HTTPStatus(exc.status_code)
        err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return reject_for(request, err)


def unexpected_error(exc: Exception) -> JSONResponse:
    """Any other exception: logged with its traceback, answered without it."""
    logger.error("unhandled error", exc_info=exc)
    return error_response(GatewayError("Internal server error."))
