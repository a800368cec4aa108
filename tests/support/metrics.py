"""Reading a /metrics scrape: one parser (prometheus_client's), three views."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.wait import WITHIN, until

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


def _key(name: str, labels: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels. A series that is not in the
    scrape fails the check: a renamed metric must never read as 0."""
    key = _key(name, labels)
    assert key in samples, f"{name}{labels} is not in the scrape"
    return samples[key]


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a series grew. It must be in the later scrape; a labelled
    series (status="400", say) may first appear between the two."""
    key = _key(name, labels)
    return value(after, name, **labels) - before.get(key, 0.0)


def metric(http: httpx.Client, name: str) -> float:
    """The value of a single-series metric (whatever its labels)."""
    found = [v for (n, _), v in scrape(http).items() if n == name]
    assert len(found) == 1, f"{name}: {len(found)} series"
    return found[0]


def wait_running_zero(http: httpx.Client, within: float = WITHIN) -> None:
    """Wait until the engine runs no request (fails the test if it never does)."""
    until(lambda: metric(http, "vllm:num_requests_running") == 0, "engine idle", within)
