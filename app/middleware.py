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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        counted = scope["path"].startswith("/v1/")
        if counted:
            self.supervisor.inflight.enter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if counted:
                self.supervisor.inflight.leave()
            request_id_var.reset(token)
