"""ASGI middleware: request ids (honouring an incoming x-request-id) and the
count of in-flight /v1 requests that drain waits for."""

from __future__ import annotations

import contextvars
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.lifecycle import Supervisor

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


class RequestContext:
    def __init__(self, app: ASGIApp, supervisor: Supervisor):
        self.app = app
        self.supervisor = supervisor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"")
        # Only a well-formed id is echoed back; anything else gets a fresh one.
        rid = incoming.decode() if _VALID_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        header = (b"x-request-id", rid.encode())

        status = 499  # unless a response starts: the client went away first

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        path: str = scope["path"]
        counted = path.startswith("/v1/")
        if counted:
            self.supervisor.inflight.enter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if counted:
                self.supervisor.inflight.leave()
            self.supervisor.metrics.request_answered(path, status)
            request_id_var.reset(token)
