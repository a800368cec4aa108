"""Reading a /metrics scrape: one parser (prometheus_client's), three views."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(http: httpx.Client | str) -> Samples:
    """A client's /metrics, or a gateway's by its base URL."""
    r = http.get("/metrics") if isinstance(http, httpx.Client) else httpx.get(f"{http}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels, 0 when absent."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def metric(http: httpx.Client, name: str) -> float:
    """The value of a single-series metric (whatever its labels)."""
    found = [v for (n, _), v in scrape(http).items() if n == name]
    assert len(found) == 1, f"{name}: {len(found)} series"
    return found[0]


def wait_running_zero(http: httpx.Client, within: float = 2.0) -> float:
    """Wait until the engine runs no request; the last value seen."""
    deadline = time.monotonic() + within
    while (n := metric(http, "vllm:num_requests_running")) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return n
