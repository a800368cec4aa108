"""The seed-table tool (make bench-seed) as a smoke test on the fixture."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.support.gateway import ROOT, Gateway
from tests.support.metrics import scrape

COMPLETIONS = "/v1/completions"


def _totals(url: str, after: bool) -> tuple[float, float, float]:
    """Requests answered on /v1/completions, prompt and output tokens. Before
    the first completion the per-endpoint series may not exist yet; after
    the tool's run each must."""
    samples = scrape(url)

    def total(name: str) -> float:
        found = [
            v
            for (n, labels), v in samples.items()
            if n == name and dict(labels).get("endpoint", COMPLETIONS) == COMPLETIONS
        ]
        assert found or not after, f"{name} missing from /metrics"
        return sum(found)

    return (
        total("gateway_requests_total"),
        total("gateway_prompt_tokens_total"),
        total("gateway_generation_tokens_total"),
    )


def test_bench_seed_quick_sends_the_card_shapes_and_times_them(gateway: Gateway) -> None:
    # What the tool claims to measure, checked against what the gateway saw:
    # --quick is a warm-up (16 in, 4 out), one 32x16 latency run, and the
    # 128x64 batch table at batch 1 and batch 2.
    before = _totals(gateway.url, after=False)
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "tools.seed", gateway.url, "--quick", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    after = _totals(gateway.url, after=True)
    requests, prompt, output = (a - b for a, b in zip(after, before, strict=True))
    assert (requests, prompt, output) == (1 + 1 + 1 + 2, 16 + 32 + 3 * 128, 4 + 16 + 3 * 64)
    result = json.loads(r.stdout)
    assert set(result["latency"]) == {"32x16"}
    total, tpot, tps = result["latency"]["32x16"]
    # a real duration, inside the tool's own run, and its per-token views
    assert 0 < total < wall and tpot == pytest.approx(total / 16 * 1000) and tps > 0
    rows = result["batch"]["128x64"]
    assert set(rows) == {"1", "2"}
    assert all(0 < row[0] < wall for row in rows.values())


def test_bench_seed_tables_carry_the_card_figures(gateway: Gateway) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tools.seed", gateway.url, "--quick"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| 32 | 16 |" in r.stdout and "0.471 / 29.47 / 33.9" in r.stdout
    assert "1.681 / 38.1 / 0.6 / 1.0x" in r.stdout
