"""API keys: Bearer tokens checked against SHA-256 digests in constant time.

Deny by default: with keys configured, every route needs one except the
health endpoints (probes carry no credentials) and, unless
GATEWAY_METRICS_AUTH is set, /metrics. Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import AuthenticationFailed, error_response
from app.metrics import Metrics

OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/health/startup"})


def load_keys(keys: list[str], key_file: Path | None) -> list[bytes]:
    """Digests of the configured keys: the list plus one key per line of the file."""
    raw = [k.strip() for k in keys]
    if key_file is not None:
        raw += [line.strip() for line in key_file.read_text().splitlines()]
    return [hashlib.sha256(k.encode()).digest() for k in raw if k and not k.startswith("#")]


class ApiKeyAuth:
    def __init__(self, app: ASGIApp, digests: list[bytes], protect_metrics: bool, metrics: Metrics):
        self.app = app
        self.digests = digests
        self.metrics = metrics
        self.open_paths = OPEN_PATHS if protect_metrics else OPEN_PATHS | {"/metrics"}

    def allowed(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        digest = hashlib.sha256(token.strip()).digest()
        # Compare against every key, always, so timing says nothing about which matched.
        matched = False
        for known in self.digests:
            matched |= hmac.compare_digest(digest, known)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        self.metrics.rejected.labels(self.metrics.model, "unauthorized").inc()
        response = error_response(AuthenticationFailed("Incorrect or missing API key."))
        await response(scope, receive, send)
