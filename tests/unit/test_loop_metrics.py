"""app.observability.loop_metrics behaves and exposes as prometheus_client's own Counter,
Gauge and Histogram do for the same calls (bounds included: le is
inclusive), errors included; only the `_created` timestamps differ."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app.observability.loop_metrics import LoopCounter, LoopGauge, LoopHistogram
from app.observability.metrics import TOKEN_LATENCY_BUCKETS


def _exposition(registry: CollectorRegistry) -> list[bytes]:
    return [line for line in generate_latest(registry).splitlines() if b"_created" not in line]


def _same(
    classes: tuple[type, type],
    make: Callable[[type, CollectorRegistry], Any],
    ops: Callable[[Any], None],
) -> bytes:
    """Run `ops` on a metric of each class; the expositions must be equal."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    ops(make(classes[0], ours))
    ops(make(classes[1], theirs))
    assert _exposition(ours) == _exposition(theirs)
    return generate_latest(ours)


def test_histogram_same_as_the_library() -> None:
    def build(cls: type, registry: CollectorRegistry) -> Any:
        return cls("x_seconds", "Doc.", ["model", "engine"], registry=registry,
                   buckets=TOKEN_LATENCY_BUCKETS)  # fmt: skip

    def ops(h: Any) -> None:
        a, b = h.labels("m", "0"), h.labels(model="m", engine="1")
        # On the bounds, between them, below the first, above the last, zero,
        # infinities and NaN (the sum only, no bucket).
        values = [0.0, 0.0005, 0.001, 0.0011, 0.0199, 0.02, 2.5, 2.6, 100.0, -1.0, math.inf]
        for v in [*values, *TOKEN_LATENCY_BUCKETS]:
            a.observe(v)
        b.observe(0.003)
        b.observe(math.nan)

    text = _same((LoopHistogram, Histogram), build, ops)
    assert b'x_seconds_bucket{engine="0",le="0.001",model="m"} 5.0' in text
    assert b'x_seconds_count{engine="1",model="m"} 1.0' in text
    assert b'x_seconds_sum{engine="1",model="m"} NaN' in text


def test_counter_and_gauge_same_as_the_library() -> None:
    def counter(cls: type, registry: CollectorRegistry) -> Any:
        return cls("z_tokens_total", "Doc.", ["model", "source"], registry=registry)

    def gauge(cls: type, registry: CollectorRegistry) -> Any:
        return cls("g_running", "Doc.", ["model"], registry=registry,
                   multiprocess_mode="mostrecent")  # fmt: skip

    def plain_gauge(cls: type, registry: CollectorRegistry) -> Any:
        return cls("q_depth", "Doc.", registry=registry)

    def count(c: Any) -> None:
        for n in (1, 3, 0, 60, 0.5):
            c.labels("m", "local").inc(n)
        c.labels("m", "remote").inc()

    def set_gauge(g: Any) -> None:
        child = g.labels("m")
        for v in (3, 0, 7.5, True):
            child.set(v)

    def move_gauge(g: Any) -> None:
        g.set(4)
        g.inc(2.5)
        g.dec()

    assert b'z_tokens_total{model="m",source="local"} 64.5' in _same(
        (LoopCounter, Counter), counter, count
    )
    assert b'g_running{model="m"} 1.0' in _same((LoopGauge, Gauge), gauge, set_gauge)
    assert b"q_depth 5.5" in _same((LoopGauge, Gauge), plain_gauge, move_gauge)


def test_an_unobserved_child_is_exported_at_zero() -> None:
    registry = CollectorRegistry()
    LoopHistogram("y_seconds", "Doc.", ["model"], registry=registry, buckets=(0.1, 1.0)).labels("m")
    text = generate_latest(registry).decode()
    assert 'y_seconds_bucket{le="+Inf",model="m"} 0.0' in text
    assert 'y_seconds_count{model="m"} 0.0' in text


def test_labels_returns_the_same_child_and_the_library_errors() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("e_total", "Doc.", ["model", "engine"], registry=registry)
    child = counter.labels("m", "0")
    assert counter.labels("m", "0") is child
    assert counter.labels(model="m", engine="0") is child
    with pytest.raises(ValueError, match="missing label values"):
        counter.inc()  # the parent, not a series
    with pytest.raises(ValueError, match="non-negative"):
        child.inc(-1)
    with pytest.raises(ValueError, match="Incorrect label count"):
        counter.labels("m")
    with pytest.raises(ValueError, match="can not chain"):
        child.labels("m", "0")
    with pytest.raises(ValueError, match="missing label values"):
        LoopHistogram("h_seconds", "Doc.", ["model"], registry=registry).observe(1.0)
    with pytest.raises(ValueError, match="missing label values"):
        LoopGauge("g_value", "Doc.", ["model"], registry=registry).set(1.0)


def test_a_non_str_label_value_is_named_as_the_library_names_it() -> None:
    class Source(str, enum.Enum):  # noqa: UP042 equal to "local", but str() is "Source.LOCAL"
        LOCAL = "local"

    registry = CollectorRegistry()
    counter = LoopCounter("s_total", "Doc.", ["source"], registry=registry)
    counter.labels("local").inc()
    counter.labels(Source.LOCAL).inc(2)
    counter.labels(0).inc(4)
    text = generate_latest(registry).decode()
    assert 's_total{source="local"} 1.0' in text
    assert f's_total{{source="{Source.LOCAL!s}"}} 2.0' in text
    assert 's_total{source="0"} 4.0' in text
