"""The Prometheus text format (0.0.4) of a registry, rendered cheaply.

`/metrics` is scraped far more often than a dashboard suggests: the Gateway
API Inference Extension's endpoint picker reads every pod's metrics every
50 ms by default, so the rendering is a per-pod CPU cost paid 20 times a
second. prometheus_client's `generate_latest` validates, escapes and sorts
every label of every sample on every scrape (~15 ms for our ~900 lines on
the CPU fixture's machine). Series are few and fixed, so the text before
each value (`name{label="value",...} `) and each family's HELP/TYPE header
are built once and kept; a scrape then formats only values.

The output is the same text as `generate_latest` (unit tests compare them on
every metric type and on the gateway's own registry; the API tests parse
the real engine's `/metrics` and `/metrics/epp`).
`names` restricts it to some families, collecting only their collectors
(prometheus_client's `restricted_registry`).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString as _untyped_go_float

# OpenMetrics-only samples, which the text format puts after the family in
# gauges of their own, in this (sorted) order.
_OM_SUFFIXES = ("_created", "_gcount", "_gsum")
_INF = float("inf")
# Series are bounded (fixed label sets); past this many, start over.
_MAX_SERIES = 100_000


class Exposition:
    """Renders one registry; keeps the text of every series it has seen."""

    def __init__(self, registry: CollectorRegistry):
        self._registry = registry
        # Served to scrapers that ask for it only while there are exemplars
        # (tracing on): otherwise Prometheus, which asks by default, keeps
        # getting the cached 0.0.4 text.
        self.openmetrics = False
        self._headers: dict[tuple[str, str, str], str] = {}
        # (sample name, label items) -> ('name{label="value",...} ', the
        # OpenMetrics-only suffix the sample carries, or "")
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, str]] = {}

    def render_openmetrics(self) -> bytes:
        """OpenMetrics text, with exemplars (rare: prometheus_client's own)."""
        from prometheus_client.openmetrics import exposition as om

        # Names keep their colons (vllm:*): prometheus_client 0.2x's default
        # escaping writes `vllm:x` in TYPE lines but `vllm_x_total` in samples.
        escaping = getattr(om, "ALLOWUTF8", None)
        if escaping is None:  # before prometheus_client 0.22: no escaping to choose
            return bytes(om.generate_latest(self._registry))  # type: ignore[no-untyped-call]
        return bytes(om.generate_latest(self._registry, escaping=escaping))  # type: ignore[no-untyped-call]

    def render(self, names: Iterable[str] | None = None) -> bytes:
        registry = self._registry if names is None else self._registry.restricted_registry(names)
        out: list[str] = []
        for metric in registry.collect():
            self._family(metric, out)
        return "".join(out).encode()

    def _family(self, metric: Metric, out: list[str]) -> None:
        key = (metric.name, metric.documentation, metric.type)
        header = self._headers.get(key)
        if header is None:
            header = self._headers[key] = _text(Metric(*key))
        out.append(header)
        series = self._series
        om: dict[str, list[str]] | None = None
        for sample in metric.samples:
            name, labels, value, timestamp = sample[0], sample[1], sample[2], sample[3]
            skey = (name, tuple(labels.items()))
            known = series.get(skey)
            if known is None:
                if len(series) > _MAX_SERIES:
                    series.clear()
                rest = name[len(metric.name) :] if name.startswith(metric.name) else ""
                known = series[skey] = (
                    self._prefix(sample),
                    rest if rest in _OM_SUFFIXES else "",
                )
            prefix, suffix = known
            value = float(value)
            # repr is floatToGoString's own answer below 1e6 (Go's exponents
            # start there); inf and nan fail the test and go to it.
            line = prefix + (repr(value) if -_INF < value < 1e6 else _go_float(value))
            if timestamp is not None:
                line += f" {int(float(timestamp) * 1000):d}"
            if suffix:
                om = om or {}
                om.setdefault(suffix, []).append(line + "\n")
            else:
                out.append(line + "\n")
        if om:
            for suffix in sorted(om):
                okey = (metric.name + suffix, metric.documentation, "gauge")
                header = self._headers.get(okey)
                if header is None:
                    header = self._headers[okey] = _text(Metric(*okey))
                out.append(header)
                out.extend(om[suffix])

    @staticmethod
    def _prefix(sample: Sample) -> str:
        """The library's own text for this series up to its value, so names
        and labels are escaped, sorted and quoted as generate_latest does."""
        metric = Metric(sample.name, "", "unknown")
        metric.samples.append(sample._replace(value=0.0, timestamp=None))
        line = _text(metric).splitlines()[-1]
        return line[: line.rindex(" ") + 1]


class _Families:
    """A collector of given families."""

    def __init__(self, *metrics: Metric):
        self._metrics = metrics

    def collect(self) -> tuple[Metric, ...]:
        return self._metrics


def _text(metric: Metric) -> str:
    return generate_latest(_Families(metric)).decode()


def _go_float(value: float) -> str:
    return str(_untyped_go_float(value))  # type: ignore[no-untyped-call]
