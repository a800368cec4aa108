"""Reproduce the seed model card's performance tables against any running gateway.

    make bench-seed URL=http://host:8000 [MODEL=MobileLLaMA-1.4B-Base] [KEY=...]
    python -m tools.seed http://host:8000 --model NAME [--quick]

Measured as the card does: temperature 0, exact input lengths (token-id
prompts), ignore_eos so every request produces its full output; total time is
the wall time of the request (of the whole batch for the batch tables),
TPOT = total / output tokens, throughput = output tokens / total. Each table
is printed beside the card's own figures (Ascend 910, vLLM-Ascend 0.18).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

# The card's figures: (input, output) -> (total s, TPOT ms, tok/s), batch 1.
SEED_LATENCY = {
    (32, 16): (0.471, 29.47, 33.9), (32, 32): (0.808, 25.24, 39.6),
    (32, 64): (1.621, 25.33, 39.5), (32, 128): (3.292, 25.72, 38.9),
    (128, 16): (0.434, 27.10, 36.9), (128, 32): (0.837, 26.16, 38.2),
    (128, 64): (1.673, 26.14, 38.3), (128, 128): (3.304, 25.81, 38.7),
    (512, 16): (0.436, 27.22, 36.7), (512, 32): (0.825, 25.77, 38.8),
    (512, 64): (1.663, 25.99, 38.5), (512, 128): (3.277, 25.61, 39.0),
    (1024, 16): (0.416, 25.99, 38.5), (1024, 32): (0.825, 25.79, 38.8),
    (1024, 64): (1.680, 26.25, 38.1), (1024, 128): (3.342, 26.11, 38.3),
}  # fmt: skip
# (input, output) -> {batch: (total s, tok/s, req/s, speed-up)}.
SEED_BATCH = {
    (128, 64): {1: (1.681, 38.1, 0.6, 1.0), 2: (1.762, 72.7, 1.1, 1.9),
                4: (1.765, 145.0, 2.3, 3.8), 8: (1.764, 290.3, 4.5, 7.6)},
    (128, 128): {1: (3.343, 38.3, 0.3, 1.0), 2: (3.399, 75.3, 0.6, 2.0),
                 4: (3.389, 151.1, 1.2, 3.9), 8: (3.394, 301.7, 2.4, 7.9)},
    (512, 64): {1: (1.677, 38.2, 0.6, 1.0), 2: (1.714, 74.7, 1.2, 2.0),
                4: (1.770, 144.6, 2.3, 3.8), 8: (1.762, 290.6, 4.5, 7.6)},
}  # fmt: skip
INPUTS = (32, 128, 512, 1024)
OUTPUTS = (16, 32, 64, 128)
BATCHES = (1, 2, 4, 8)


@dataclass
class Target:
    url: str
    model: str
    headers: dict[str, str]


def prompt_ids(length: int, rng: random.Random) -> list[int]:
    """BOS + random ordinary tokens: exactly `length` prompt tokens."""
    return [1] + [rng.randrange(1000, 30000) for _ in range(length - 1)]


async def one(client: httpx.AsyncClient, t: Target, prompt: list[int], out: int) -> float:
    body = {
        "model": t.model,
        "prompt": prompt,
        "max_tokens": out,
        "temperature": 0,
        "ignore_eos": True,
    }
    t0 = time.perf_counter()
    r = await client.post(f"{t.url}/v1/completions", json=body, headers=t.headers)
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    got = r.json()["usage"]["completion_tokens"]
    if got != out:
        raise RuntimeError(f"asked for {out} tokens, got {got} (ignore_eos unsupported?)")
    return elapsed


async def batch(
    client: httpx.AsyncClient, t: Target, inp: int, out: int, size: int, rng: random.Random
) -> float:
    prompts = [prompt_ids(inp, rng) for _ in range(size)]
    t0 = time.perf_counter()
    await asyncio.gather(*(one(client, t, p, out) for p in prompts))
    return time.perf_counter() - t0


async def measure(
    t: Target,
    inputs: tuple[int, ...],
    outputs: tuple[int, ...],
    batches: tuple[int, ...],
    batch_shapes: list[tuple[int, int]],
    repeats: int,
) -> dict[str, Any]:
    rng = random.Random(0)
    async with httpx.AsyncClient(timeout=600) as client:
        await one(client, t, prompt_ids(16, rng), 4)  # connection and warm path
        latency = {}
        for inp in inputs:
            for out in outputs:
                runs = sorted(
                    [await one(client, t, prompt_ids(inp, rng), out) for _ in range(repeats)]
                )
                total = runs[len(runs) // 2]
                latency[(inp, out)] = (total, total / out * 1000, out / total)
        batch_tables: dict[tuple[int, int], dict[int, tuple[float, float, float, float]]] = {}
        for inp, out in batch_shapes:
            rows: dict[int, tuple[float, float, float, float]] = {}
            for size in batches:
                runs = sorted([await batch(client, t, inp, out, size, rng) for _ in range(repeats)])
                total = runs[len(runs) // 2]
                tput = size * out / total
                base = rows[batches[0]][1] if rows else tput
                rows[size] = (total, tput, size / total, tput / base)
            batch_tables[(inp, out)] = rows
    return {"latency": latency, "batch": batch_tables}


def render(result: dict[str, Any]) -> str:
    lines = [
        "## End-to-end latency (batch 1, temperature 0)",
        "",
        "| input | output | total (s) | TPOT (ms/tok) | tok/s | card: total / TPOT / tok/s |",
        "|---|---|---|---|---|---|",
    ]
    for (inp, out), (total, tpot, tps) in result["latency"].items():
        seed = SEED_LATENCY.get((inp, out))
        ref = f"{seed[0]:.3f} / {seed[1]:.2f} / {seed[2]:.1f}" if seed else "-"
        lines.append(f"| {inp} | {out} | {total:.3f} | {tpot:.2f} | {tps:.1f} | {ref} |")
    for (inp, out), rows in result["batch"].items():
        lines += [
            "",
            f"## Batch throughput (input={inp}, output={out})",
            "",
            "| batch | total (s) | tok/s | req/s | speed-up "
            "| card: total / tok/s / req/s / speed-up |",
            "|---|---|---|---|---|---|",
        ]
        for size, (total, tput, rps, speedup) in rows.items():
            seed_b = SEED_BATCH.get((inp, out), {}).get(size)
            ref = (
                f"{seed_b[0]:.3f} / {seed_b[1]:.1f} / {seed_b[2]:.1f} / {seed_b[3]:.1f}x"
                if seed_b
                else "-"
            )
            lines.append(
                f"| {size} | {total:.3f} | {tput:.1f} | {rps:.2f} | {speedup:.1f}x | {ref} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("--model", help="served model id (default: the gateway's only model)")
    p.add_argument("--api-key")
    p.add_argument("--repeats", type=int, default=3, help="runs per cell; the median is kept")
    p.add_argument("--quick", action="store_true", help="a tiny subset (CI smoke test)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    a = p.parse_args()
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    url = a.url.rstrip("/")
    model = a.model or httpx.get(f"{url}/v1/models", headers=headers).json()["data"][0]["id"]
    t = Target(url, model, headers)
    if a.quick:
        shape = dict(
            inputs=(32,), outputs=(16,), batches=(1, 2), batch_shapes=[(128, 64)], repeats=1
        )
    else:
        shape = dict(
            inputs=INPUTS,
            outputs=OUTPUTS,
            batches=BATCHES,
            batch_shapes=list(SEED_BATCH),
            repeats=a.repeats,
        )
    result = asyncio.run(measure(t, **shape))  # type: ignore[arg-type]
    if a.json:
        print(
            json.dumps(
                {
                    "latency": {f"{k[0]}x{k[1]}": v for k, v in result["latency"].items()},
                    "batch": {f"{k[0]}x{k[1]}": v for k, v in result["batch"].items()},
                }
            )
        )
    else:
        print(f"# {model} at {url}\n")
        print(render(result))


if __name__ == "__main__":
    main()
