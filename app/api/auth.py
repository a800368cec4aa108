"""API keys: Bearer tokens checked against SHA-256 digests in constant time;
each key is a tenant's (app.tenancy.tenants), which the request then carries.

Deny by default: with keys configured, every route needs one except the
ones app.api.route_table marks open: the health endpoints (probes carry no
credentials) and, unless GATEWAY_METRICS_AUTH is set, /metrics. Keys are never logged. With
GATEWAY_RATE_LIMIT_RPM, each key also has a request rate (app/api/ratelimit.py).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.middleware import exchange
from app.api.ratelimit import RateLimiter
from app.api.rejection import Rejections
from app.errors import AuthenticationFailed, GatewayError, RateLimited
from app.scopes import TENANT
from app.tenancy.tenants import Tenant, TenantBook


class ApiKeyAuth:
    def __init__(
        self,
        app: ASGIApp,
        book: TenantBook,
        rejections: Rejections,
        limiter: RateLimiter | None = None,
    ):
        self.app = app
        self.book = book
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
        endpoint = exchange(scope).endpoint
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
