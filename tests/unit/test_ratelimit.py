"""RateLimiter (app/api/ratelimit.py): a token bucket per key, refilled at
rpm/60 a second up to the burst, with Retry-After the whole seconds until
the next token. Driven on a hand-moved clock."""

from __future__ import annotations

import time

import pytest

from app.api.ratelimit import RateLimiter
from app.errors import RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "monotonic", c)  # the module reads time.monotonic()
    return c


def served(limiter: RateLimiter, key: bytes = b"k") -> bool:
    try:
        limiter.check(key)
    except RateLimited:
        return False
    return True


def test_a_new_key_gets_its_burst_then_is_refused(clock: Clock) -> None:
    limiter = RateLimiter(per_minute=60, burst=3)
    assert [served(limiter) for _ in range(4)] == [True, True, True, False]
    with pytest.raises(RateLimited) as exc:
        limiter.check(b"k")
    assert exc.value.retry_after == 1
    assert exc.value.headers() == {"Retry-After": "1"}
    assert exc.value.message == (
        "Rate limit reached for this API key (60 requests per minute); retry after 1 s."
    )
    assert exc.value.code == "rate_limit_exceeded" and int(exc.value.status) == 429


def test_keys_have_buckets_of_their_own(clock: Clock) -> None:
    limiter = RateLimiter(per_minute=60, burst=1)
    assert served(limiter, b"a") and not served(limiter, b"a")
    assert served(limiter, b"b")


def test_the_bucket_refills_at_the_rate_and_no_further_than_the_burst(clock: Clock) -> None:
    limiter = RateLimiter(per_minute=30, burst=2)  # one token every 2 s
    assert served(limiter) and served(limiter) and not served(limiter)
    clock.now += 1.9
    assert not served(limiter)  # 0.95 of a token: not yet
    clock.now += 0.1
    assert served(limiter) and not served(limiter)  # exactly one refilled
    clock.now += 3600  # an hour idle: still only the burst
    assert [served(limiter) for _ in range(3)] == [True, True, False]


def test_retry_after_is_the_wait_for_the_next_whole_token_rounded_up(clock: Clock) -> None:
    limiter = RateLimiter(per_minute=6, burst=1)  # one token every 10 s
    assert served(limiter)
    clock.now += 2.5
    with pytest.raises(RateLimited) as exc:
        limiter.check(b"k")
    assert exc.value.retry_after == 8  # 7.5 s to go, rounded up
    clock.now += 7.5
    assert served(limiter)  # refused checks did not cost a token


def test_a_token_due_this_second_is_served_despite_float_sums(clock: Clock) -> None:
    limiter = RateLimiter(per_minute=1, burst=1)
    assert served(limiter) and not served(limiter)
    clock.now += 59
    with pytest.raises(RateLimited) as exc:
        limiter.check(b"k")
    assert exc.value.retry_after == 1
    assert "(1 requests per minute)" in exc.value.message
    clock.now += 1
    assert served(limiter)
