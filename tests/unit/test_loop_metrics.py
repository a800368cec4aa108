"""app.loop_metrics exposes what prometheus_client's own Histogram and
Counter would, for the same observations (bounds included: le is inclusive)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from app.loop_metrics import LoopCounter, LoopHistogram
from app.metrics import TOKEN_LATENCY_BUCKETS


def test_same_exposition_as_a_prometheus_client_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("x_seconds", "Doc.", TOKEN_LATENCY_BUCKETS, "m", ours)
    reference = Histogram(
        "x_seconds", "Doc.", ["model"], registry=theirs, buckets=TOKEN_LATENCY_BUCKETS
    ).labels("m")
    # On the bounds, between them, below the first, above the last, zero.
    values = [0.0, 0.0005, 0.001, 0.0011, 0.02, 0.0199, 2.5, 2.6, 100.0, *TOKEN_LATENCY_BUCKETS]
    for v in values:
        loop.observe(v)
        reference.observe(v)
    # prometheus_client adds a `_created` timestamp series; the rest is equal.
    created = [line for line in generate_latest(theirs).splitlines() if b"_created" in line]
    assert len(created) == 3  # HELP, TYPE and the sample
    kept = [line for line in generate_latest(theirs).splitlines() if b"_created" not in line]
    assert generate_latest(ours).splitlines() == kept
    assert b'x_seconds_bucket{le="0.001",model="m"} 4.0' in generate_latest(ours)


def test_an_unobserved_histogram_is_exported_at_zero() -> None:
    registry = CollectorRegistry()
    LoopHistogram("y_seconds", "Doc.", (0.1, 1.0), "m", registry)
    text = generate_latest(registry).decode()
    assert 'y_seconds_bucket{le="+Inf",model="m"} 0.0' in text
    assert 'y_seconds_count{model="m"} 0.0' in text


def test_counter_same_exposition_as_a_prometheus_client_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopCounter("z_tokens_total", "Doc.", "m", ours)
    reference = Counter("z_tokens_total", "Doc.", ["model"], registry=theirs).labels("m")
    for n in (1, 3, 0, 60):
        loop.inc(n)
        reference.inc(n)
    kept = [line for line in generate_latest(theirs).splitlines() if b"_created" not in line]
    assert generate_latest(ours).splitlines() == kept
    assert b'z_tokens_total{model="m"} 64.0' in generate_latest(ours)
