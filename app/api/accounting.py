"""The HTTP side of tenants: every completion and chat request gets a
RequestRecord before anything can refuse it and is accounted once when its
answer is over, whatever the ending (app.tenancy.ledger); every /v1 answer
to a tenant with limits carries OpenAI's x-ratelimit-* headers. Installed
only when tenants or the usage log are configured."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.route_table import Endpoints
from app.scopes import RECORD, TENANT, request_id_var
from app.tenancy.ledger import Ledger

COMPLETION_ROUTES = frozenset(("/v1/completions", "/v1/chat/completions"))
_LIMIT_HEADERS = (b"x-ratelimit-limit-tokens", b"x-ratelimit-limit-requests")


class Accounting:
    def __init__(self, app: ASGIApp, endpoints: Endpoints, ledger: Ledger):
        self.app = app
        self.endpoints = endpoints
        self.ledger = ledger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        ledger = self.ledger
        label = self.endpoints.match(scope["path"]).label
        record = None
        if label in COMPLETION_ROUTES:
            record = scope[RECORD] = ledger.open(label, request_id_var.get() or "")
        status = 499  # unless a response starts: the client went away first

        async def send_start(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                tenant = scope.get(TENANT)
                if tenant is not None and tenant.limited:
                    headers = list(message.get("headers", []))
                    if not any(k.lower() in _LIMIT_HEADERS for k, _ in headers):
                        limits = record.headers() if record is not None else {}
                        limits = limits or ledger.last_headers.get(tenant.name, {})
                        headers += [(k.encode(), v.encode()) for k, v in limits.items()]
                        message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_start)
        finally:
            if record is not None:
                record.tenant = record.tenant or scope.get(TENANT)
                ledger.finish(record, status)
