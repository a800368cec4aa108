"""app.observability.exposition renders exactly what prometheus_client's generate_latest
does, on every metric type, after values change, and restricted to names."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)
from prometheus_client.core import GaugeHistogramMetricFamily, Metric

from app.observability.exposition import Exposition
from app.observability.metrics import Metrics


class _GaugeHistogram:
    def collect(self) -> Iterator[Metric]:
        yield GaugeHistogramMetricFamily(
            "queue_depth", "a gauge histogram", buckets=[("1.0", 4), ("+Inf", 5)], gsum_value=7
        )


def _registry() -> tuple[CollectorRegistry, Counter, Histogram, Gauge]:
    r = CollectorRegistry()
    counter = Counter(
        "requests", 'doc with \\ and\nnewline and "quotes"', ["model", "status"], registry=r
    )
    counter.labels('quote"d', "200").inc(3)
    counter.labels("new\nline", "5\\00").inc()
    gauge = Gauge("vllm:num_requests_running", "running", ["model_name", "engine"], registry=r)
    gauge.labels("m", "0").set(2.5)
    hist = Histogram("lat_seconds", "latency", ["model"], buckets=[0.001, 0.5, 1e7], registry=r)
    hist.labels("m").observe(0.005)
    hist.labels("n").observe(1e9)
    Summary("work_seconds", "summary", registry=r).observe(4)
    Info("build", "build info", registry=r).info({"version": "1.0"})
    Enum("state", "state", states=["a", "b"], registry=r).state("b")
    Gauge("nan_value", "nan", registry=r).set(float("nan"))
    Gauge("low_value", "-inf", registry=r).set(float("-inf"))
    Gauge("big_value", "Go exponent", registry=r).set(123456789.0)
    r.register(_GaugeHistogram())
    return r, counter, hist, gauge


def test_same_text_as_generate_latest_and_after_values_change() -> None:
    registry, counter, hist, gauge = _registry()
    exposition = Exposition(registry)
    assert exposition.render() == generate_latest(registry)
    # Cached series text, fresh values; a new series appears.
    counter.labels('quote"d', "200").inc(0.25)
    hist.labels("m").observe(3)
    gauge.labels("m", "0").set(-1e-7)
    counter.labels("other", "429").inc()
    text = exposition.render()
    assert text == generate_latest(registry)
    assert b'requests_total{model="other",status="429"} 1.0' in text
    assert b'lat_seconds_bucket{le="1e+07",model="m"} 2.0' in text
    assert b"big_value 1.23456789e+08" in text


def test_the_gateways_own_metrics() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, "tiny")
    metrics.ttft.observe(0.02)
    assert metrics.exposition.render() == generate_latest(registry)


def test_restricted_to_names() -> None:
    registry, *_ = _registry()
    exposition = Exposition(registry)
    names = ["vllm:num_requests_running", "absent_metric"]
    text = exposition.render(names)
    assert text == generate_latest(registry.restricted_registry(names))
    assert text.startswith(b"# HELP vllm:num_requests_running running\n")
    assert b"requests_total" not in text
