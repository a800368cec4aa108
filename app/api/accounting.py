"""The HTTP side of request records: every completion and chat request gets
a RequestRecord (app.observability.record) before anything can refuse it,
and is told once when its answer is over, whatever the ending, to the ledger
(usage log, budgets: app.tenancy.ledger) and to its trace span
(app.observability.tracing); every /v1 answer to a tenant with limits
carries OpenAI's x-ratelimit-* headers. Installed only when tenants, the
usage log or tracing are configured."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.route_table import Endpoints
from app.observability.record import RequestRecord
from app.observability.tracing import Tracing
from app.scopes import RECORD, TENANT, request_id_var, trace_ids_var
from app.tenancy.ledger import Ledger

COMPLETION_ROUTES = frozenset(("/v1/completions", "/v1/chat/completions"))
_LIMIT_HEADERS = (b"x-ratelimit-limit-tokens", b"x-ratelimit-limit-requests")


class Accounting:
    def __init__(
        self,
        app: ASGIApp,
        endpoints: Endpoints,
        ledger: Ledger | None = None,
        tracing: Tracing | None = None,
    ):
        self.app = app
        self.endpoints = endpoints
        self.ledger = ledger
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        ledger, tracing = self.ledger, self.tracing
        label = self.endpoints.match(scope["path"]).label
        record = None
        token = None
        if label in COMPLETION_ROUTES:
            record = scope[RECORD] = RequestRecord(label, request_id_var.get() or "")
            if tracing is not None:
                tracing.start(record, scope["headers"])
                token = trace_ids_var.set(tracing.ids(record))
        status = 499  # unless a response starts: the client went away first

        async def send_start(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                tenant = scope.get(TENANT)
                if ledger is not None and tenant is not None and tenant.limited:
                    headers = list(message.get("headers", []))
                    if not any(k.lower() in _LIMIT_HEADERS for k, _ in headers):
                        charge = record.charge if record is not None else None
                        limits = charge.headers if charge is not None else {}
                        limits = limits or ledger.headers_now(tenant)
                        headers += [(k.encode(), v.encode()) for k, v in limits.items()]
                        message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_start)
        finally:
            if record is not None:
                record.tenant = record.tenant or scope.get(TENANT)
                if ledger is not None:
                    ledger.finish(record, status)
                if tracing is not None:
                    tracing.finish(record, status, time.monotonic())
            if token is not None:
                trace_ids_var.reset(token)
