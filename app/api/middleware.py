"""ASGI middleware: request ids (honouring an incoming x-request-id), the
count of in-flight requests that drain waits for, `Connection: close` while
draining, the body limit, and the 500 for an unexpected exception.

RequestContext, outermost, matches the route once and wraps `send` once per
request: the Exchange it leaves in the scope is how every layer below sees
the route, the answer's status and whether it has started, and adds
headers to its start (app.api.accounting, app.api.auth)."""

from __future__ import annotations

import re
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.rejection import Rejections, unexpected_error
from app.api.route_table import Endpoint, Endpoints
from app.errors import CLIENT_CLOSED, PayloadTooLarge
from app.ids import new_id
from app.lifecycle.inflight import InFlight
from app.observability.metrics import Metrics
from app.scopes import BODY_SEND, EXCHANGE, request_id_var

Headers = list[tuple[bytes, bytes]]


class Exchange:
    """One request and its answer, as the middleware below RequestContext
    sees them (scope[EXCHANGE])."""

    __slots__ = ("endpoint", "on_start", "started", "status")

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint  # the route, matched once
        self.status = CLIENT_CLOSED  # unless an answer starts: the client went away first
        self.started = False
        # Called with the start's headers (to append to) as it goes out.
        self.on_start: list[Callable[[Headers], None]] = []


def exchange(scope: Scope) -> Exchange:
    ex: Exchange = scope[EXCHANGE]
    return ex


_CLOSE = (b"connection", b"close")
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


class RequestContext:
    def __init__(
        self,
        app: ASGIApp,
        endpoints: Endpoints,
        inflight: InFlight,
        metrics: Metrics,
        closing: Callable[[], bool] = lambda: False,
    ):
        self.app = app
        self.endpoints = endpoints
        self.inflight = inflight
        self.metrics = metrics
        self.closing = closing  # True while draining: answers close their connection

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"")
        # Only a well-formed id is echoed back; anything else gets a fresh one.
        rid = incoming.decode() if _VALID_ID.match(incoming) else new_id()
        token = request_id_var.set(rid)
        header = (b"x-request-id", rid.encode())
        scope[BODY_SEND] = send
        endpoint = self.endpoints.match(scope["path"])
        ex = scope[EXCHANGE] = Exchange(endpoint)

        async def send_once(message: Message) -> None:
            if message["type"] == "http.response.start":
                ex.status, ex.started = message["status"], True
                headers: Headers = [*message.get("headers", []), header]
                for add in ex.on_start:
                    add(headers)
                if self.closing():
                    # Pooled clients and proxies stop reusing this connection
                    # (uvicorn closes it after this answer).
                    headers.append(_CLOSE)
                message["headers"] = headers
            await send(message)

        if endpoint.drained:
            self.inflight.enter()
        try:
            await self.app(scope, receive, send_once)
        finally:
            if endpoint.drained:
                self.inflight.leave()
            self.metrics.request_answered(endpoint.label, ex.status)
            request_id_var.reset(token)


class BodyLimit:
    """Refuse request bodies over the limit with an OpenAI-style 413, whether
    the client declares the size (Content-Length) or sends it chunked. A
    route may have a limit of its own (`routes`: label -> bytes; uploads)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        rejections: Rejections,
        routes: dict[str, int] | None = None,
    ):
        self.app = app
        self.max_bytes = max_bytes
        self.rejections = rejections
        self.routes = routes or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.routes.get(exchange(scope).endpoint.label, self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self.rejections.send(_too_large(limit), scope, receive, send)
            return
        if declared is not None:
            # The HTTP parser holds a body to its declared length.
            await self.app(scope, receive, send)
            return
        # Chunked: read it here (at most the limit) and hand it on whole.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away mid-body
            size += len(message.get("body", b""))
            if size > limit:
                await self.rejections.send(_too_large(limit), scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        pending: Message | None = {"type": "http.request", "body": b"".join(chunks)}

        async def replay() -> Message:
            nonlocal pending
            if pending is not None:
                message, pending = pending, None
                return message
            return await receive()

        await self.app(scope, replay, send)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body larger than {limit} bytes.")


class InternalErrors:
    """An unexpected exception becomes a bare OpenAI-style 500, logged once.

    Starlette answers it only in its outermost layer, outside every
    middleware, and re-raises it for the server to log again: the response
    then had no request id and was counted as a client that went away. Here
    it is answered inside RequestContext. Once a response has started there
    is nothing left to answer with: the exception goes on and the connection
    is closed."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            if scope["type"] != "http" or exchange(scope).started:
                raise
            await unexpected_error(exc)(scope, receive, send)
