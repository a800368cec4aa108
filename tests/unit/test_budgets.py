"""A tenant's budget arithmetic (app/tenancy/budgets.py), edge by edge: the
windows a request charges and their keys, OpenAI's reset format, the
headers, max_concurrent, and the 429 a refused charge gets."""

from __future__ import annotations

import pytest

from app.errors import BudgetExceeded
from app.tenancy.budgets import Concurrency, _duration, rate_headers, refusal, windows
from app.tenancy.tenants import Tenant

NOW = 86_400 * 3 + 3725.25  # day 3, 01:02:05.25 UTC


def test_the_windows_of_a_request_their_keys_lives_and_resets() -> None:
    t = Tenant("t", b"t", tokens_per_minute=100, requests_per_minute=5, tokens_per_day=1000)
    minute, requests, day = windows(t, 30, NOW)
    assert minute.key == f"gw:budget:t:tokens_per_minute:{86_400 * 3 + 3720}"
    assert requests.key == f"gw:budget:t:requests_per_minute:{86_400 * 3 + 3720}"
    assert day.key == f"gw:budget:t:tokens_per_day:{86_400 * 3}"
    assert minute.reset == pytest.approx(54.75) and minute.ttl == 54 + 5
    assert day.reset == pytest.approx(86_400 - 3725.25) and day.ttl == 86_400 - 3726 + 5
    assert (minute.add, requests.add, day.add) == (30, 1, 30)
    assert (minute.limit, requests.limit, day.limit) == (100, 5, 1000)
    assert windows(Tenant("free", b"f"), 30, NOW) == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (-3, "0s"), (0.2, "1s"), (59, "59s"), (60, "1m0s"), (125, "2m5s"),
     (3600, "1h0m0s"), (3661, "1h1m1s"), (86_399, "23h59m59s")],
)  # fmt: skip
def test_reset_durations_in_openais_format(seconds: float, text: str) -> None:
    assert _duration(seconds) == text


def test_headers_for_requests_alone_and_never_a_negative_remainder() -> None:
    only_requests = windows(Tenant("r", b"r", requests_per_minute=5), 10, NOW)
    assert rate_headers(only_requests, (7,)) == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "55s",
        "x-ratelimit-budget-requests": "requests_per_minute",
    }
    only_day = windows(Tenant("d", b"d", tokens_per_day=50), 10, NOW)
    assert rate_headers(only_day, (50,))["x-ratelimit-remaining-tokens"] == "0"


def test_max_concurrent_counts_entries_and_leaves() -> None:
    t = Tenant("c", b"c", max_concurrent=2)
    c = Concurrency()
    c.leave(t)  # a leave without an entry changes nothing
    assert c.counts == {"c": 0}
    c.enter(t)
    c.enter(t)
    with pytest.raises(BudgetExceeded) as exc:
        c.enter(t)
    assert exc.value.retry_after == 1 and exc.value.code == "max_concurrent_exceeded"
    assert exc.value.message == (
        "Tenant 'c' has 2 requests running, its limit (max_concurrent); retry when one ends."
    )
    c.leave(t)
    assert c.counts == {"c": 1}
    c.enter(t)  # the freed one, and only it
    with pytest.raises(BudgetExceeded):
        c.enter(t)
    c.leave(t)
    c.leave(t)
    assert c.counts == {"c": 0}
    free = Tenant("free", b"f")
    c.enter(free)
    c.leave(free)
    assert "free" not in c.counts  # no limit: not counted


def test_a_refusal_names_the_budget_what_is_left_and_when_to_retry() -> None:
    t = Tenant("t", b"t", tokens_per_minute=100)
    [w] = windows(t, 40, 59.8)  # 0.2 s before the minute ends
    headers = rate_headers([w], (90,))
    exc = refusal(w, 90, headers)
    assert exc.retry_after == 1
    assert (
        exc.message == "Budget tokens_per_minute reached (10 of 100 tokens left); retry after 1 s."
    )
    assert exc.code == "tokens_per_minute_exceeded"
    assert exc.headers() == {"Retry-After": "1", **headers}
    [whole] = windows(t, 100, 30.0)  # exactly the whole budget: not "more than" it
    assert "0 of 100 tokens left" in refusal(whole, 120, {}).message
    [over] = windows(t, 101, 30.0)
    assert refusal(over, 0, {}).message == (
        "Budget tokens_per_minute reached (this request needs 101 tokens, more than the "
        "whole budget); retry after 30 s."
    )
