"""A tenant's budgets as fixed windows: tokens per minute and per day,
requests per minute (shared by a fleet when the counters live in Redis),
and concurrent requests (per gateway: they are engine places).

A request is charged `prompt + max_tokens` (every choice) when it is
admitted and settled to what it really used when it ends; beyond a budget,
429 with Retry-After (the seconds until that window resets) and the budget
named in the error's code. Pure arithmetic and bookkeeping here; where the
counters live is app.tenancy.quota."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from app.errors import BudgetExceeded, InvalidRequest
from app.tenancy.tenants import Tenant

MINUTE = 60
DAY = 86_400


@dataclass(frozen=True, slots=True)
class Window:
    """One counter of one tenant: `budget` names it in errors and headers."""

    budget: str  # tokens_per_minute | tokens_per_day | requests_per_minute
    key: str  # the store's key: tenant, budget and window start
    limit: int
    add: int  # what this request charges
    ttl: int  # seconds the counter must live (to the window's end, and a margin)
    reset: float  # seconds until the window ends

    @property
    def unit(self) -> str:
        return "requests" if self.budget.startswith("requests") else "tokens"


def windows(tenant: Tenant, tokens: int, now: float) -> list[Window]:
    """The counters a request of `tokens` charges, at wall-clock time `now`."""
    out: list[Window] = []
    for budget, limit, span, add in (
        ("tokens_per_minute", tenant.tokens_per_minute, MINUTE, tokens),
        ("requests_per_minute", tenant.requests_per_minute, MINUTE, 1),
        ("tokens_per_day", tenant.tokens_per_day, DAY, tokens),
    ):
        if limit is None:
            continue
        start = int(now // span) * span
        reset = start + span - now
        key = f"gw:budget:{tenant.name}:{budget}:{start}"
        out.append(Window(budget, key, limit, add, int(reset) + 5, reset))
    return out


@dataclass(frozen=True, slots=True)
class Verdict:
    """A store's answer: each window's count after the charge, or the index
    of the first window it would overflow (nothing was charged then)."""

    counts: tuple[int, ...]
    refused: int | None = None
    local: bool = False  # charged on this process's own counters (the fleet's unreachable)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: '1s', '6m0s', '1h2m3s'."""
    s = max(0, math.ceil(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


RATE_HEADERS = tuple(
    f"x-ratelimit-{what}-{unit}"
    for unit in ("tokens", "requests")
    for what in ("limit", "remaining", "reset", "budget")
)


def rate_headers(windows: list[Window], counts: tuple[int, ...]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers, of the binding budget of each unit
    (the one with the least left: the day's once it is nearly spent), named
    in x-ratelimit-budget-*."""
    headers: dict[str, str] = {}
    for unit in ("tokens", "requests"):
        mine = [(w, c) for w, c in zip(windows, counts, strict=True) if w.unit == unit]
        if not mine:
            continue
        w, c = min(mine, key=lambda wc: wc[0].limit - wc[1])
        headers[f"x-ratelimit-budget-{unit}"] = w.budget
        headers[f"x-ratelimit-limit-{unit}"] = str(w.limit)
        headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, w.limit - c))
        headers[f"x-ratelimit-reset-{unit}"] = _duration(w.reset)
    return headers


@dataclass(slots=True)
class Charge:
    """What one request was charged, to settle at its end."""

    tenant: Tenant
    windows: list[Window]
    tokens: int
    headers: dict[str, str]
    id: str = ""  # the store's idempotency key for this charge
    local: bool = False  # taken on this process's own counters: refunded there
    settled: bool = False


@dataclass
class Concurrency:
    """Requests of each tenant in this gateway now (max_concurrent)."""

    counts: dict[str, int] = field(default_factory=dict)

    def enter(self, tenant: Tenant) -> None:
        limit = tenant.max_concurrent
        if limit is None:
            return
        now = self.counts.get(tenant.name, 0)
        if now >= limit:
            raise BudgetExceeded(
                f"Tenant '{tenant.name}' has {now} requests running, its limit "
                "(max_concurrent); retry when one ends.",
                retry_after=1,
                code="max_concurrent_exceeded",
            )
        self.counts[tenant.name] = now + 1

    def leave(self, tenant: Tenant) -> None:
        if tenant.max_concurrent is not None:
            self.counts[tenant.name] = max(0, self.counts.get(tenant.name, 0) - 1)


def too_large(windows: list[Window]) -> None:
    """A 400 for a request whose reservation alone is above a whole token
    budget: a 429's Retry-After could never help it."""
    for w in windows:
        if w.unit == "tokens" and w.add > w.limit:
            raise InvalidRequest(
                f"This request reserves {w.add} tokens (its prompt plus max_tokens for "
                f"every choice), more than the whole {w.budget} budget ({w.limit}): no "
                "retry can fit it. Send a smaller max_tokens (or n, or prompt).",
                param="max_tokens",
                code="budget_too_small",
            )


def refusal(window: Window, count: int, headers: dict[str, str]) -> BudgetExceeded:
    """The 429 for a charge that would overflow `window` (at `count` now)."""
    wait = max(1, math.ceil(window.reset))
    if window.add > window.limit:
        why = f"this request needs {window.add} {window.unit}, more than the whole budget"
    else:
        why = f"{max(0, window.limit - count)} of {window.limit} {window.unit} left"
    return BudgetExceeded(
        f"Budget {window.budget} reached ({why}); retry after {wait} s.",
        retry_after=wait,
        code=f"{window.budget}_exceeded",
        extra_headers=headers,
    )
