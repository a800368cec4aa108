"""Side by side, quickly: API-process CPU per output token and throughput of
the gateway, vLLM's server and the gateway at another commit.

python -m bench.ab --concurrency 8 32 64 --rounds 2 [--rev COMMIT]

One server alive at a time, alternated in turn (old, new, vLLM, then
reversed); medians per level and the ratios to vLLM's server. `make bench`
is the full report; this is the loop for trying a change.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.run import MODEL, NAME, ROOT, measured
from bench.servers import Server, gateway, thinnest, vllm_server

KEYS = (
    "api_cpu_ms_per_1k_tokens",
    "output_throughput",
    "median_ttft_ms",
    "median_tpot_ms",
    "api_cpu_ms_per_request",
)


def checkout(rev: str) -> Path:
    """A worktree of `rev` (the same venv serves it: only app/ differs)."""
    path = Path(tempfile.mkdtemp(prefix="gateway-")) / rev
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True,
        capture_output=True,
    )  # fmt: skip
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rev", help="also run the gateway at this commit")
    p.add_argument("--no-vllm", action="store_true", help="gateways only")
    p.add_argument("--thinnest", action="store_true", help="also bench.thinnest (a floor)")
    p.add_argument("--prompts", type=int, help="per level (default max(16, 4c))")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for the new gateway")
    a = p.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="ab-"))
    starters: list[Callable[[Path], Server]] = []
    if a.rev:
        old = checkout(a.rev)
        starters.append(lambda log: gateway(MODEL, log, NAME, cwd=old, name=f"gw@{a.rev}"))
    env = dict(kv.split("=", 1) for kv in a.env)
    starters.append(lambda log: gateway(MODEL, log, NAME, env=env))
    if a.thinnest:
        starters.append(lambda log: thinnest(MODEL, log, NAME))
    if not a.no_vllm:
        starters.append(lambda log: vllm_server(MODEL, log, NAME))

    runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for turn in range(a.rounds):
        order = starters if turn % 2 == 0 else starters[::-1]
        for start in order:
            s = start(logs / f"{len(runs)}-{turn}.log")
            try:
                s.wait_ready()
                for c in a.concurrency:
                    r = measured(s, c, a.prompts, a.input_len, a.output_len)
                    runs.setdefault(s.name, {}).setdefault(c, []).append(r)
                    print(
                        f"c={c:<3} {s.name:<14} {r['output_throughput']:7.1f} tok/s "
                        f"api cpu {r['api_cpu_ms_per_1k_tokens']:6.0f} ms/1k tok"
                        f" {r['api_cpu_ms_per_request']:6.2f} ms/request",
                        flush=True,
                    )
            finally:
                s.stop()

    names = list(runs)
    print("\n| c | " + " | ".join(f"{n} cpu ms/1k, tok/s" for n in names) + " | ratios to vLLM |")
    print("|---" * (len(names) + 2) + "|")
    for c in a.concurrency:
        med = {n: {k: statistics.median(r[k] for r in runs[n][c]) for k in KEYS} for n in names}
        cells = [f"{med[n][KEYS[0]]:.0f}, {med[n][KEYS[1]]:.0f}" for n in names]
        ratios = ""
        if "vllm-server" in med:
            v = med["vllm-server"]
            ratios = "; ".join(
                f"{n}: cpu {med[n][KEYS[0]] / v[KEYS[0]]:.2f}"
                f" tok/s {med[n][KEYS[1]] / v[KEYS[1]]:.2f}"
                f" ttft {med[n][KEYS[2]] / v[KEYS[2]]:.2f}"
                for n in names
                if n != "vllm-server"
            )
        print(f"| {c} | " + " | ".join(cells) + f" | {ratios} |")


if __name__ == "__main__":
    main()
