"""The HTTP side of request records: every completion and chat request gets
a RequestRecord (app.observability.record) before anything can refuse it,
and is told once when its answer is over, whatever the ending, to the ledger
(usage log, budgets: app.tenancy.ledger) and to its trace span
(app.observability.tracing); every /v1 answer to a tenant with limits
carries OpenAI's x-ratelimit-* headers. Installed only when tenants, the
usage log or tracing are configured."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.middleware import Headers, exchange
from app.completion.door import Door
from app.scopes import RECORD, TENANT, request_id_var, trace_ids_var
from app.tenancy.budgets import Charge

COMPLETION_ROUTES = frozenset(("/v1/completions", "/v1/chat/completions"))
_LIMIT_HEADERS = (b"x-ratelimit-limit-tokens", b"x-ratelimit-limit-requests")


class Accounting:
    def __init__(self, app: ASGIApp, door: Door):
        self.app = app
        self.door = door  # the one way into a completion (HTTP and batch lines)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        ledger, tracing = self.door.ledger, self.door.tracing
        ex = exchange(scope)
        record = None
        token = None
        if ex.endpoint.label in COMPLETION_ROUTES:
            record = self.door.open(ex.endpoint.label, request_id_var.get() or "", scope["headers"])
            scope[RECORD] = record
            if tracing is not None:
                token = trace_ids_var.set(tracing.ids(record))

        def rate_limits(headers: Headers) -> None:
            """OpenAI's x-ratelimit-* on every answer to a tenant with limits
            (a 429 carries its own already)."""
            tenant = scope.get(TENANT)
            if ledger is None or tenant is None or not tenant.limited:
                return
            if ex.status == 429 and any(k.lower() in _LIMIT_HEADERS for k, _ in headers):
                return
            charge = record.charge if record is not None else None
            limits = charge.headers if isinstance(charge, Charge) else {}
            limits = limits or ledger.headers_now(tenant)
            headers.extend((k.encode(), v.encode()) for k, v in limits.items())

        if ledger is not None:
            ex.on_start.append(rate_limits)
        try:
            await self.app(scope, receive, send)
        finally:
            if record is not None:
                self.door.close(record, ex.status, scope.get(TENANT))
            if token is not None:
                trace_ids_var.reset(token)
