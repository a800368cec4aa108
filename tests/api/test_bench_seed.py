"""The seed-table tool (make bench-seed) as a smoke test on the fixture."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.gateway import ROOT, Gateway


def test_bench_seed_quick_measures_the_card_shapes(gateway: Gateway) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tools.seed", gateway.url, "--quick", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    total, tpot, tps = result["latency"]["32x16"]
    assert total > 0 and abs(tpot - total / 16 * 1000) < 1e-6 and abs(tps - 16 / total) < 1e-6
    rows = result["batch"]["128x64"]
    assert set(rows) == {"1", "2"}
    assert rows["1"][3] == 1.0  # speed-up of batch 1 against itself
    assert rows["2"][1] == 2 * 64 / rows["2"][0]


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
