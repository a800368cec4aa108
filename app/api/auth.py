"""API keys: Bearer tokens checked against SHA-256 digests in constant time;
each key is a tenant's (app.tenancy.tenants), which the request then carries.

Deny by default: with keys configured, every route needs one except the
ones app.api.route_table marks open: the health endpoints (probes carry no
credentials) and, unless GATEWAY_METRICS_AUTH is set, /metrics. Keys are never logged. With
GATEWAY_RATE_LIMIT_RPM, each key also has a request rate (app/api/ratelimit.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.ratelimit import RateLimiter
from app.api.rejection import Rejections
from app.api.route_table import Endpoints
from app.errors import AuthenticationFailed, GatewayError, RateLimited
from app.scopes import TENANT
from app.tenancy.tenants import Tenant, TenantBook


def load_keys(keys: list[str], key_file: Path | None) -> list[bytes]:
    """Digests of the configured keys: the list plus one key per line of the file."""
    raw = [k.strip() for k in keys]
    if key_file is not None:
        raw += [line.strip() for line in key_file.read_text().splitlines()]
    return [hashlib.sha256(k.encode()).digest() for k in raw if k and not k.startswith("#")]


class ApiKeyAuth:
    def __init__(
        self,
        app: ASGIApp,
        book: TenantBook,
        endpoints: Endpoints,
        rejections: Rejections,
        limiter: RateLimiter | None = None,
    ):
        self.app = app
        self.book = book
        self.endpoints = endpoints
        self.rejections = rejections
        self.limiter = limiter

    def tenant_of(self, scope: Scope) -> Tenant | None:
        """The tenant whose key the request carries, or None."""
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return None
        return self.book.lookup(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self.endpoints.match(scope["path"])
        if endpoint.open:
            await self.app(scope, receive, send)
            return
        tenant = self.tenant_of(scope)
        error: GatewayError
        if tenant is None:
            error = AuthenticationFailed("Incorrect or missing API key.")
        elif self.limiter is None or not endpoint.limited:
            scope[TENANT] = tenant
            await self.app(scope, receive, send)
            return
        else:
            try:
                self.limiter.check(tenant.identity)
            except RateLimited as exc:
                error = exc
            else:
                scope[TENANT] = tenant
                await self.app(scope, receive, send)
                return
        await self.rejections.send(error, scope, receive, send)
