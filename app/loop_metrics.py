"""Prometheus metrics updated on the event loop only, for the per-token path.

prometheus_client's Histogram takes a lock twice per observation and finds
the bucket with a Python loop (about 2 µs each on the development machine);
its Counter takes a lock per increment. Inter-token latency and generated
tokens are recorded for every output of every stream, all on the event
loop, and scraped there too (the /metrics route is async), so plain numbers
suffice: no lock, a fraction of the cost. Both are custom collectors
(prometheus_client's documented extension point), exposed exactly as a
Histogram or Counter with a `model` label would be.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class LoopHistogram(Collector):
    def __init__(
        self,
        name: str,
        doc: str,
        buckets: tuple[float, ...],
        model: str,
        registry: CollectorRegistry,
    ):
        self.name, self.doc, self.model = name, doc, model
        self._bounds = [float(b) for b in buckets]
        self._les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._counts = [0] * (len(self._bounds) + 1)  # the last: above every bound
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        # le is inclusive: the first bound >= value.
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.doc, labels=["model"])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.doc, labels=["model"])
        cumulative, total = [], 0
        for le, count in zip(self._les, self._counts, strict=True):
            total += count
            cumulative.append((le, total))
        family.add_metric([self.model], cumulative, self._sum)
        yield family


class LoopCounter(Collector):
    def __init__(self, name: str, doc: str, model: str, registry: CollectorRegistry):
        # As prometheus_client's Counter: the family without `_total`, the sample with it.
        self.name = name.removesuffix("_total")
        self.doc, self.model = doc, model
        self.value = 0
        registry.register(self)

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.doc, labels=["model"])

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.doc, labels=["model"])
        family.add_metric([self.model], self.value)
        yield family
