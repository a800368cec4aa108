"""The gateway's exceptions and the one table that maps them to HTTP and SSE.

Routes and services raise; only this module decides status codes and bodies.
Messages are written by us: never a stack trace, never an echo of the input.
"""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.metrics import Metrics
from app.schemas import CompletionRequest, DetokenizeRequest, StreamOptions, TokenizeRequest

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    """Base class: carries what the client is told."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    type: str = "server_error"
    code: str | None = None
    # The `reason` label of gateway_rejected_requests_total; None: not a rejection.
    reason: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str] | None:
        return None


class InvalidRequest(GatewayError):
    status = HTTPStatus.BAD_REQUEST
    type = "invalid_request_error"
    reason = "invalid_request"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"
    reason = "context_length"


class ModelNotFound(GatewayError):
    status = HTTPStatus.NOT_FOUND
    type = "invalid_request_error"
    code = "model_not_found"
    reason = "model_not_found"


class RouteNotFound(GatewayError):
    status = HTTPStatus.NOT_FOUND
    type = "invalid_request_error"


class MethodNotAllowed(GatewayError):
    status = HTTPStatus.METHOD_NOT_ALLOWED
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = HTTPStatus.UNAUTHORIZED
    type = "invalid_request_error"
    code = "invalid_api_key"
    reason = "unauthorized"

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"}


class Unavailable(GatewayError):
    """The gateway cannot take work now (starting, draining, engine gone)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    type = "service_unavailable"
    reason = "unavailable"
    retry_after = 5

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)}


class Overloaded(Unavailable):
    """Admission control: both the in-flight and the queue bounds are full."""

    type = "overloaded_error"
    code = "overloaded"
    reason = "overloaded"
    retry_after = 1


class RateLimited(GatewayError):
    """A key's request rate is over GATEWAY_RATE_LIMIT_RPM."""

    status = HTTPStatus.TOO_MANY_REQUESTS
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    reason = "rate_limited"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)}


class PayloadTooLarge(GatewayError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    type = "invalid_request_error"
    reason = "too_large"


class RequestTimeout(GatewayError):
    """The request's total deadline (GATEWAY_REQUEST_TIMEOUT) passed; its
    engine work has been aborted. Counted where it is raised (streams too)."""

    status = HTTPStatus.GATEWAY_TIMEOUT
    type = "timeout_error"
    code = "request_timeout"


class EngineFailure(GatewayError):
    """The engine failed this request (it may still serve others)."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    type = "server_error"


def error_response(exc: GatewayError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


def sse_error_data(exc: GatewayError) -> str:
    """The `data:` payload of the error event that ends a broken stream."""
    body = exc.body()
    body["error"]["code"] = exc.code or int(exc.status)
    return json.dumps(body)


# Fields whose type is a union: pydantic reports one error per member, which
# reads badly ("should be a valid string" for a list); say what is accepted.
_UNION_HINTS = {
    "prompt": "a string, a list of strings, a list of token ids or a list of token-id lists",
    "stop": "a string or a list of strings",
}


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_FIELDS = frozenset(
    name
    for model in (CompletionRequest, StreamOptions, TokenizeRequest, DetokenizeRequest)
    for name in model.model_fields
)


def _is_union_tag(part: str) -> bool:
    return "[" in part or part in {"str", "int", "float", "bool", "list", "dict"}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """Describe the first validation problem by field, without the offending value."""
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None
    # A value error is a validator's verdict on a value of the right type
    # (app.schemas): more telling than the union members it failed to be.
    err = next((e for e in errors if e.get("type") == "value_error"), errors[0])
    kind = err.get("type", "")
    path = [str(p) for p in err.get("loc", ()) if p != "body"]
    # Name fields only: stop at a dict key or list index the client chose.
    names: list[str] = []
    for part in path:
        if part.isdigit() or _is_union_tag(part):
            continue
        if part not in _FIELDS:
            break
        names.append(part)
    param = ".".join(names) or None
    if kind == "json_invalid":
        return "Request body is not valid JSON.", None
    if not names and kind in ("model_attributes_type", "dict_type", "model_type"):
        return "Request body must be a JSON object.", None
    if kind == "extra_forbidden":
        # Named like OpenAI does, but only when the name is a plain identifier:
        # an arbitrary client string is never reflected.
        extra = path[-1] if path else ""
        if _IDENTIFIER.fullmatch(extra):
            param = ".".join([*names, extra])
            return f"Unrecognized request argument supplied: {param}", param
        return "Unrecognized request argument supplied.", param
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param
    if kind == "value_error":
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        return f"Invalid value for '{param}': {msg}.", param
    if names and names[0] in _UNION_HINTS and len(names) == 1:
        return f"Invalid value for '{names[0]}': expected {_UNION_HINTS[names[0]]}.", names[0]
    msg = str(err.get("msg", "invalid value"))
    return (f"Invalid value for '{param}': {msg}." if param else f"{msg}."), param


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def reject(exc: GatewayError) -> JSONResponse:
        if exc.reason is not None:
            metrics.rejected.labels(metrics.model, exc.reason).inc()
        return error_response(exc)

    @app.exception_handler(GatewayError)
    async def _gateway(_: Request, exc: GatewayError) -> JSONResponse:
        return reject(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type.lower():
            # FastAPI parses a body as JSON only when it is declared so, which
            # keeps browsers from posting without a CORS preflight; `curl -d`
            # declares a form.
            message = "The request body must be JSON, sent with 'Content-Type: application/json'."
            return reject(InvalidRequest(message))
        message, param = _validation_message(exc)
        return reject(InvalidRequest(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == HTTPStatus.NOT_FOUND:
            return error_response(RouteNotFound("No such route."))
        if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
            return error_response(MethodNotAllowed("Method not allowed for this route."))
        if exc.status_code == HTTPStatus.BAD_REQUEST:
            # FastAPI's only 400: a body its JSON parser gave up on (e.g. too deeply nested).
            return reject(InvalidRequest("Request body could not be parsed as JSON."))
        err = GatewayError(HTTPStatus(exc.status_code).phrase)
        err.status = HTTPStatus(exc.status_code)
        err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(err)


def unexpected_error(exc: Exception) -> JSONResponse:
    """Any other exception: logged with its traceback, answered without it."""
    logger.error("unhandled error", exc_info=exc)
    return error_response(GatewayError("Internal server error."))
