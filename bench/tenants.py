"""What tenants buy and cost, on the real engine (one gateway at a time):

    python -m bench.tenants [--seconds 40] [--rounds 3]

1. Fairness: tenants `a` and `b` (equal weights) past saturation, `a`
   offering ten times `b`'s load (closed-loop clients, 10:1); output tokens
   per second each, and Jain's index over weight-normalised throughput.
   Beside it the same load without a tenants file (one first-come queue).
   Newcomer: `a` alone for `--warm` seconds (10 minutes by default: its
   counter grows all along), then `b` joins; the same figures over the next
   `--seconds`: a newcomer neither starves nor is starved.
2. Priority: the TTFT of a priority-0 stream on an idle server, then under a
   priority-20 flood that fills every place, with and without a reserve.
3. Cost: API-process CPU per 1000 output tokens and tok/s with tenants on
   (budgets that never trigger, the usage log, per-tenant metrics) and off
   (the same keys as plain API keys), under vLLM's benchmark client as
   `make bench` runs it, alternated A B A B, each round's figure and the
   median.

The engine runs 8 sequences at once (`max_num_seqs`), so that load
saturates it with few clients on two cores; `b` has 16 closed-loop clients
(twice the places: it always has requests waiting, so it is past its share
too) and `a` 160.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.run import MODEL, NAME, measured
from bench.servers import Server, gateway

SLOTS = 8
TENANTS = """
tenants:
  - name: a
    keys: [sk-a]
    default_priority: 20
    min_priority: 0
    tokens_per_minute: 100000000
    requests_per_minute: 1000000
  - name: b
    keys: [sk-b]
    default_priority: 20
    min_priority: 0
    tokens_per_minute: 100000000
    requests_per_minute: 1000000
"""


def start(logs: Path, label: str, tenants: bool, reserve: int = 0) -> Server:
    env = {"GATEWAY_MAX_NUM_SEQS": str(SLOTS), "GATEWAY_API_KEYS": "sk-a,sk-b"}
    if tenants:
        f = logs / "tenants.yaml"
        f.write_text(TENANTS)
        env |= {
            "GATEWAY_TENANTS_FILE": str(f),
            "GATEWAY_USAGE_LOG": str(logs / f"usage-{label}.jsonl"),
            "GATEWAY_PRIORITY_RESERVE": str(reserve),
            "GATEWAY_RESERVE_PRIORITY": "0",
        }
    else:
        env["GATEWAY_MAX_INFLIGHT"] = str(SLOTS)  # the same places, first come first served
    s = gateway(MODEL, logs / f"{label}.log", NAME, name=label, env=env)
    s.wait_ready()
    return s


def cpu_seconds(server: Server) -> float:
    t = psutil.Process(server.proc.pid).cpu_times()
    return float(t.user + t.system)


async def clients(
    url: str,
    key: str,
    n: int,
    until: float,
    max_tokens: int,
    counted_from: float,
    tokens: list[int],
) -> None:
    """`n` closed-loop clients until `until` (then cut); output tokens of the
    requests that end between `counted_from` and `until` go to tokens[0]."""
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=600) as c:

        async def one(i: int) -> None:
            k = 0
            while time.monotonic() < until:
                prompt = f"Client {i} request {k}:"
                body = {"model": NAME, "prompt": prompt, "max_tokens": max_tokens}
                body["ignore_eos"] = True
                r = await c.post("/v1/completions", json=body)
                k += 1
                if r.status_code == 200 and counted_from <= time.monotonic() <= until:
                    tokens[0] += r.json()["usage"]["completion_tokens"]

        # Cut at `until`: what is still queued then (a backlog of the
        # flooding tenant's) must not drain into the figures afterwards.
        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, until - time.monotonic()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def jain(xs: list[float]) -> float:
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)) if any(xs) else 0.0


def _shares(a: int, b: int, window: float) -> dict[str, float]:
    r = {"a_tok_s": a / window, "b_tok_s": b / window}
    r["jain"] = jain([r["a_tok_s"], r["b_tok_s"]])
    r["b_share"] = r["b_tok_s"] / (r["a_tok_s"] + r["b_tok_s"])
    return r


def fairness(server: Server, seconds: float) -> dict[str, float]:
    async def run() -> dict[str, float]:
        t0 = time.monotonic()
        until, counted_from = t0 + seconds, t0 + min(10.0, seconds / 4)
        a, b = [0], [0]
        await asyncio.gather(
            clients(server.url, "sk-a", 20 * SLOTS, until, 64, counted_from, a),
            clients(server.url, "sk-b", 2 * SLOTS, until, 64, counted_from, b),
        )
        return _shares(a[0], b[0], until - counted_from)

    return asyncio.run(run())


def newcomer(server: Server, warm: float, seconds: float) -> dict[str, float]:
    async def run() -> dict[str, float]:
        t0 = time.monotonic()
        joins = t0 + warm
        until, counted_from = joins + seconds, joins + min(10.0, seconds / 4)
        a, b = [0], [0]

        async def late() -> None:
            await asyncio.sleep(warm)
            await clients(server.url, "sk-b", 2 * SLOTS, until, 64, counted_from, b)

        await asyncio.gather(
            clients(server.url, "sk-a", 20 * SLOTS, until, 64, counted_from, a), late()
        )
        return _shares(a[0], b[0], until - counted_from)

    return asyncio.run(run())


async def ttft(url: str, key: str, priority: int | None) -> float:
    body: dict[str, Any] = {"model": NAME, "prompt": "Urgent:", "max_tokens": 4, "stream": True}
    if priority is not None:
        body["priority"] = priority
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as c:
        t0 = time.monotonic()
        async with c.stream("POST", "/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:") and '"text"' in line:
                    return time.monotonic() - t0
    raise RuntimeError("no token")


def priority_ttft(server: Server, samples: int = 10) -> dict[str, float]:
    async def run() -> dict[str, float]:
        idle = [await ttft(server.url, "sk-b", 0) for _ in range(samples)]
        stop = time.monotonic() + 3600
        flood_tokens = [0]
        flood = asyncio.create_task(
            clients(server.url, "sk-a", 3 * SLOTS, stop, 256, stop, flood_tokens)
        )
        await asyncio.sleep(8)  # every place taken, a backlog waiting
        loaded = []
        for _ in range(samples):
            loaded.append(await ttft(server.url, "sk-b", 0))
            await asyncio.sleep(0.5)
        flood.cancel()
        await asyncio.gather(flood, return_exceptions=True)
        return {
            "idle_ttft_ms": statistics.median(idle) * 1e3,
            "flood_ttft_ms": statistics.median(loaded) * 1e3,
        }

    r = asyncio.run(run())
    r["ratio"] = r["flood_ttft_ms"] / r["idle_ttft_ms"]
    return r


def cost(server: Server, concurrency: int) -> dict[str, float]:
    """vLLM's benchmark client, as `make bench` runs it (random 128 in / 64
    out, streaming), with tenant a's key (it sends OPENAI_API_KEY)."""
    os.environ["OPENAI_API_KEY"] = "sk-a"
    r = measured(server, concurrency)
    return {"tok_s": r["output_throughput"], "api_cpu_ms_per_1k": r["api_cpu_ms_per_1k_tokens"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warm", type=float, default=600, help="seconds of a alone (newcomer)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--parts", nargs="+", default=["fairness", "priority", "cost"],
        choices=["fairness", "newcomer", "priority", "cost"],
    )  # fmt: skip
    a = p.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-tenants-"))
    report: dict[str, Any] = {"slots": SLOTS}

    def show(label: str, r: dict[str, float]) -> None:
        print(f"{label:<28} " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)

    for label, tenants, reserve in (("fifo", False, 0), ("tenants", True, 0), ("reserve", True, 2)):
        fair = "fairness" in a.parts and label != "reserve"
        late = "newcomer" in a.parts and label == "tenants"
        prio = "priority" in a.parts and label != "fifo"
        if not (fair or late or prio):
            continue
        s = start(logs, label, tenants, reserve)
        try:
            if fair:
                report[f"fairness_{label}"] = r = fairness(s, a.seconds)
                show(f"fairness {label}", r)
            if late:
                report["newcomer"] = r = newcomer(s, a.warm, a.seconds)
                show(f"newcomer after {a.warm:g} s", r)
            if prio:
                report[f"priority_{label}"] = r = priority_ttft(s)
                show(f"priority ttft {label}", r)
        finally:
            s.stop()
    runs: dict[str, dict[int, list[dict[str, float]]]] = {"off": {}, "on": {}}
    for turn in range(a.rounds if "cost" in a.parts else 0):
        for mode in ("off", "on"):
            s = start(logs, f"cost-{mode}-{turn}", mode == "on")
            try:
                for c in a.concurrency:
                    r = cost(s, c)
                    runs[mode].setdefault(c, []).append(r)
                    show(f"cost {mode} c={c} round {turn}", r)
            finally:
                s.stop()
    report["cost_runs"] = runs
    for c in a.concurrency if "cost" in a.parts else []:
        med = {m: {k: statistics.median(r[k] for r in runs[m][c]) for k in runs[m][c][0]}
               for m in runs}  # fmt: skip
        ratio = med["on"]["api_cpu_ms_per_1k"] / med["off"]["api_cpu_ms_per_1k"]
        report[f"cost_c{c}"] = {**{f"{m}_{k}": v for m in med for k, v in med[m].items()},
                                "cpu_ratio": ratio}  # fmt: skip
        show(f"cost median c={c}", report[f"cost_c{c}"])
    text = json.dumps(report, indent=2)
    if a.out is not None:
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
