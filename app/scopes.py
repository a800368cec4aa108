"""Per-request names shared across the wings: the request id's context
variable and the keys under which middleware leaves things in the ASGI scope.
A leaf: it imports nothing from the app."""

from __future__ import annotations

import contextvars

# The request's id (an incoming x-request-id, or a fresh one), for log lines.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

# The send below every middleware of ours, kept in the scope by
# RequestContext for a response's body once it has started: the middleware
# here (and Starlette's, and CORS) look at `http.response.start` only (status,
# headers); none rewrites a body, so a stream's per-token chunks need not
# pass through each of their wrappers.
BODY_SEND = "gateway.body_send"

# Under which RequestContext leaves the request's Exchange (app.api.middleware):
# its route, matched once, and its answer's status and start.
EXCHANGE = "gateway.exchange"

# Under which an authenticated request carries its tenant (app.tenancy):
# its terms, and the identity the prefix-cache salt is derived from.
TENANT = "gateway.tenant"

# Under which a completion request carries its RequestRecord (usage log,
# budgets), when tenants or the usage log are configured.
RECORD = "gateway.record"

# The request's (trace id, span id) in hex while tracing is on, for log lines.
trace_ids_var: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "trace_ids", default=None
)
