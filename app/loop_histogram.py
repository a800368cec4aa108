"""A Prometheus histogram for observations made on the event loop only.

prometheus_client's Histogram takes a lock twice per observation and finds
the bucket with a Python loop: about 2 µs each on the development machine.
Inter-token latency is observed for every token of every stream, all on the
event loop, and scraped there too (the /metrics route is async), so a plain
list of counts and `bisect` suffice: no lock, a tenth of the cost. It is a
custom collector (prometheus_client's documented extension point), exposed
exactly as a Histogram with a `model` label would be.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
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
