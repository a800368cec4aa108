"""The gateway's exceptions: what a client is told when a request cannot be
served. A leaf: it imports nothing from the app. How each one becomes an HTTP
answer or an SSE error event, and which are counted as rejections, is
decided in one place, app/api/rejection.py.

Messages are written by us: never a stack trace, never an echo of the input.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

# The status of a request whose client went away before any answer started:
# not an HTTP status anyone receives (nginx's 499), but what the metrics,
# the usage log and the traces record for it.
CLIENT_CLOSED = 499


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


class InvalidConstraint(InvalidRequest):
    """An output constraint (response_format, structured_outputs, guided_*)
    that cannot be enforced: malformed, too large, or refused by the engine's
    grammar backend."""

    code = "invalid_constraint"
    reason = "invalid_constraint"


class TemplateMissing(InvalidRequest):
    """A chat request, and no chat template configured or shipped with the tokenizer."""

    code = "chat_template_missing"


class ModelNotFound(GatewayError):
    status = HTTPStatus.NOT_FOUND
    type = "invalid_request_error"
    code = "model_not_found"
    reason = "model_not_found"


class ResourceNotFound(GatewayError):
    """A file or batch that does not exist, or is another tenant's (the same
    answer: ids are not probed)."""

    status = HTTPStatus.NOT_FOUND
    type = "invalid_request_error"
    code = "not_found"
    reason = "not_found"


class Conflict(GatewayError):
    """The resource is being changed by another call right now; try again."""

    status = HTTPStatus.CONFLICT
    type = "invalid_request_error"
    code = "conflict"
    reason = "conflict"


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

    def __init__(
        self,
        message: str,
        *,
        retry_after: int,
        code: str | None = None,
        extra_headers: dict[str, str] | None = None,
    ):
        super().__init__(message, code=code)
        self.retry_after = retry_after
        self.extra_headers = extra_headers or {}

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after), **self.extra_headers}


class BudgetExceeded(RateLimited):
    """A tenant's budget (tokens or requests per minute, tokens per day,
    concurrent requests) is spent; the code names the budget."""

    reason = "budget"


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


class EngineStalled(GatewayError):
    """The engine ran requests but produced nothing for GATEWAY_STALL_TIMEOUT
    seconds (alive but hung): the gateway has failed and will exit."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    type = "engine_error"
    code = "engine_stalled"

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": "5"}


class EngineFailure(GatewayError):
    """The engine failed this request (it may still serve others)."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    type = "server_error"


class HeadersTooLarge(GatewayError):
    """The request line and headers are over GATEWAY_MAX_HEADER_BYTES / _MAX_HEADERS."""

    status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    type = "invalid_request_error"
    code = "headers_too_large"
    reason = "headers_too_large"


class HeaderTimeout(GatewayError):
    """The request's headers did not arrive within GATEWAY_HEADER_TIMEOUT (slowloris)."""

    status = HTTPStatus.REQUEST_TIMEOUT
    type = "invalid_request_error"
    code = "header_timeout"
    reason = "header_timeout"


def reject_reasons() -> tuple[str, ...]:
    """Every `reason` label a rejection can carry, from the classes themselves."""
    reasons: dict[str, None] = {}
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        cls = pending.pop(0)
        if cls.reason is not None:
            reasons.setdefault(cls.reason)
        pending.extend(cls.__subclasses__())
    return tuple(reasons)


class PermissionDenied(GatewayError):
    """A key that may not call this endpoint (the admin endpoints need an admin key)."""

    status = HTTPStatus.FORBIDDEN
    type = "permission_error"
    code = "admin_key_required"
    reason = "forbidden"
