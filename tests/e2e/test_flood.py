"""1000 concurrent streams from a separate client process (tools.flood):
each completes in full or is refused cleanly (503 + Retry-After); none hangs
or breaks; the gateway's own RSS comes back to within 10% of where it was."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support.gateway import ROOT, start_gateway, stop_gateway

INFLIGHT, QUEUE = 128, 256


def flood(url: str, streams: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "tools.flood", url, "--streams", str(streams), "--timeout", "240"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=True,
    )
    result: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_thousand_concurrent_streams(model_dir: Path, tmp_path: Path) -> None:
    gw = start_gateway(
        model_dir,
        tmp_path / "gateway.log",
        "--warmup",
        "minimal",
        env={"GATEWAY_MAX_INFLIGHT": str(INFLIGHT), "GATEWAY_MAX_QUEUE": str(QUEUE)},
    )
    try:
        proc = psutil.Process(gw.proc.pid)  # the gateway; its engine core is a child
        warm = flood(gw.url, 200)  # first-use allocations, then the baseline
        assert warm["ok"] == 200, warm
        before = proc.memory_info().rss

        result = flood(gw.url, 1000)

        assert result["hung"] == 0 and result["error"] == 0, result
        assert result["ok"] + result["refused"] == 1000, result
        # Refusals start only once INFLIGHT + QUEUE are admitted, all of which finish.
        assert result["ok"] >= INFLIGHT + QUEUE, result
        deadline = time.monotonic() + 30
        while (after := proc.memory_info().rss) > 1.1 * before and time.monotonic() < deadline:
            time.sleep(1)
        assert after <= 1.1 * before, (before / 2**20, after / 2**20)
        assert gw.proc.poll() is None  # still serving
    finally:
        stop_gateway(gw)
    if gw.proc.returncode != 0:
        pytest.fail(f"gateway exited {gw.proc.returncode}:\n{gw.logs()[-3000:]}")
