"""API keys: Bearer tokens checked against SHA-256 digests in constant time.

Deny by default: with keys configured, every route needs one except the
ones app.api.route_table marks open: the health endpoints (probes carry no
credentials) and, unless GATEWAY_METRICS_AUTH is set, /metrics. Keys are never logged. With
GATEWAY_RATE_LIMIT_RPM, each key also has a request rate (app/api/ratelimit.py).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.ratelimit import RateLimiter
from app.api.rejection import Rejections
from app.api.route_table import Endpoints
from app.errors import AuthenticationFailed, GatewayError, RateLimited
from app.scopes import TENANT


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
        digests: list[bytes],
        endpoints: Endpoints,
        rejections: Rejections,
        limiter: RateLimiter | None = None,
    ):
        self.app = app
        self.digests = digests
        self.endpoints = endpoints
        self.rejections = rejections
        self.limiter = limiter

    def key_of(self, scope: Scope) -> bytes | None:
        """The digest of the request's key if it is a configured one, else None."""
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return None
        digest = hashlib.sha256(token.strip()).digest()
        # Compare against every key, always, so timing says nothing about which matched.
        matched = None
        for known in self.digests:
            if hmac.compare_digest(digest, known):
                matched = known
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self.endpoints.match(scope["path"])
        if endpoint.open:
            await self.app(scope, receive, send)
            return
        key = self.key_of(scope)
        error: GatewayError
        if key is None:
            error = AuthenticationFailed("Incorrect or missing API key.")
        elif self.limiter is None or not endpoint.limited:
            scope[TENANT] = key
            await self.app(scope, receive, send)
            return
        else:
            try:
                self.limiter.check(key)
            except RateLimited as exc:
                error = exc
            else:
                scope[TENANT] = key
                await self.app(scope, receive, send)
                return
        await self.rejections.send(error, scope, receive, send)
