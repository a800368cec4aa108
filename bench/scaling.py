"""How the serving process's cost grows with concurrent streams, up to 256:
its own RSS (engine core excluded; baseline and peak while serving) and, for
the gateway, its event-loop lag (gateway_event_loop_lag_seconds, sampled every
0.5 s inside the process). vLLM's OpenAI server is measured the same way
beside it (it exports no loop-lag figure). Load: vLLM's benchmark client,
random 128 in / 64 out, ignore_eos, 2 x c prompts at concurrency c.

    python -m bench.scaling            # alone: bench/results/<date>-scaling.{json,md}

`make bench` runs it too and puts the table in the same report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.client import run_serve_benchmark
from bench.servers import Server, gateway, vllm_server

ROOT = Path(__file__).resolve().parent.parent
MODEL = str(ROOT / ".cache" / "models" / "tiny-mobilellama")
NAME = "tiny-mobilellama"
LEVELS = [1, 16, 64, 128, 256]
LAG = "gateway_event_loop_lag_seconds"


class PeakRss:
    """Samples a process's RSS every 50 ms in a thread; keeps the peak."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def lag_buckets(url: str) -> dict[float, float]:
    """Cumulative bucket counts of the gateway's loop-lag histogram."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == LAG:
            for s in family.samples:
                if s.name == f"{LAG}_bucket":
                    out[float(s.labels["le"])] = s.value
    return out


def quantile_bound(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The smallest bucket bound under which a fraction q of the new samples fell."""
    delta = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = delta[float("inf")]
    if not total:
        return 0.0
    for le, count in delta.items():
        if count >= q * total:
            return le
    return float("inf")


def measure(start: Callable[[str, Path, str], Server], levels: list[int], log: Path) -> list[Any]:
    server = start(MODEL, log, NAME)
    rows = []
    try:
        server.wait_ready()
        proc = psutil.Process(server.proc.pid)
        baseline = proc.memory_info().rss
        for c in levels:
            before = lag_buckets(server.url) if server.name == "gateway" else {}
            with PeakRss(server.proc.pid) as rss:
                r = run_serve_benchmark(server.url, NAME, MODEL, c, max(16, 2 * c))
            row: dict[str, Any] = {
                "server": server.name,
                "concurrency": c,
                "output_throughput": round(r["output_throughput"], 1),
                "median_ttft_ms": round(r["median_ttft_ms"], 1),
                "median_tpot_ms": round(r["median_tpot_ms"], 2),
                "failed": r.get("failed", 0),
                "rss_baseline_mb": round(baseline / 2**20, 1),
                "rss_peak_mb": round(rss.peak / 2**20, 1),
                "rss_after_mb": round(proc.memory_info().rss / 2**20, 1),
            }
            if before:
                after = lag_buckets(server.url)
                row["loop_lag_p50_ms_le"] = quantile_bound(before, after, 0.5) * 1000
                row["loop_lag_p99_ms_le"] = quantile_bound(before, after, 0.99) * 1000
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        server.stop()
    return rows


def scaling(levels: list[int], logs: Path) -> list[dict[str, Any]]:
    # One server alive at a time: an idle vLLM engine still spins a core.
    return measure(gateway, levels, logs / "scaling-gateway.log") + measure(
        vllm_server, levels, logs / "scaling-vllm.log"
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "## Scaling to 256 streams: memory and event-loop lag",
        "",
        "Server process RSS (engine core excluded): idle baseline, peak while serving, after. "
        "Loop lag: bucket bounds (upper) of gateway_event_loop_lag_seconds over the run.",
        "",
        "| c | server | tok/s | TTFT p50 (ms) | TPOT p50 (ms) | RSS base / peak / after (MB) "
        "| loop lag p50 / p99 (ms, <=) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["server"])):
        lag = (
            f"{r['loop_lag_p50_ms_le']:g} / {r['loop_lag_p99_ms_le']:g}"
            if "loop_lag_p50_ms_le" in r
            else "n/a"
        )
        lines.append(
            f"| {r['concurrency']} | {r['server']} | {r['output_throughput']:.0f} "
            f"| {r['median_ttft_ms']:.1f} | {r['median_tpot_ms']:.2f} "
            f"| {r['rss_baseline_mb']:.0f} / {r['rss_peak_mb']:.0f} / {r['rss_after_mb']:.0f} "
            f"| {lag} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", type=int, nargs="+", default=LEVELS)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = p.parse_args()
    rows = scaling(a.levels, Path(tempfile.mkdtemp(prefix="scaling-")))
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"{dt.date.today().isoformat()}-scaling"
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
