"""The ceiling: the same AsyncLLM driven in-process, no HTTP.

python -m bench.inprocess --model DIR --concurrency 1 8 32 --input-len 128 --output-len 64
prints one JSON object per concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import time
from typing import Any


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _one(
    llm: Any, sem: asyncio.Semaphore, prompt: list[int], params: Any, request_id: str
) -> int:
    tokens = 0
    async with sem:
        async for out in llm.generate({"prompt_token_ids": prompt}, params, request_id):
            tokens += len(out.outputs[0].token_ids)
    return tokens


async def run(
    model: str,
    concurrencies: list[int],
    input_len: int,
    output_len: int,
    prompts_per_level: dict[int, int],
) -> None:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    from bench.engine_args import engine_kwargs

    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs(model)))
    params = SamplingParams(
        max_tokens=output_len, ignore_eos=True, temperature=1.0, output_kind=RequestOutputKind.DELTA
    )
    rng = random.Random(0)
    try:
        for c in concurrencies:
            n = prompts_per_level[c]
            prompts = [[rng.randrange(100, 31000) for _ in range(input_len)] for _ in range(n)]
            sem = asyncio.Semaphore(c)
            t0 = time.perf_counter()
            cpu0 = _cpu_seconds()
            counts = await asyncio.gather(
                *(_one(llm, sem, p, params, f"r{c}-{i}") for i, p in enumerate(prompts))
            )
            duration = time.perf_counter() - t0
            cpu = _cpu_seconds() - cpu0
            print(
                json.dumps(
                    {
                        "concurrency": c,
                        "completed": n,
                        "duration": duration,
                        "output_throughput": sum(counts) / duration,
                        # This process only (the engine core is a child):
                        # what vLLM's output handling costs with no HTTP.
                        "api_cpu_ms_per_1k_tokens": cpu * 1e6 / sum(counts),
                    }
                ),
                flush=True,
            )
    finally:
        llm.shutdown()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--prompts", type=str, default="{}", help="JSON {concurrency: prompts}")
    a = p.parse_args()
    per = {int(k): v for k, v in json.loads(a.prompts).items()}
    levels = {c: per.get(c, max(16, 4 * c)) for c in a.concurrency}
    asyncio.run(run(a.model, a.concurrency, a.input_len, a.output_len, levels))


if __name__ == "__main__":
    main()
