"""vLLM's own benchmark client (`vllm.benchmarks.serve`), driven in-process."""

from __future__ import annotations

import argparse
import contextlib
import io
from typing import Any

KEEP = (
    "completed", "failed", "duration", "total_output_tokens", "output_throughput",
    "request_throughput",
    "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
    "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms",
    "mean_itl_ms", "median_itl_ms", "p99_itl_ms",
)  # fmt: skip


def run_serve_benchmark(
    base_url: str,
    model: str,
    tokenizer: str,
    concurrency: int,
    num_prompts: int,
    input_len: int = 128,
    output_len: int = 64,
    seed: int = 0,
    lora_modules: list[str] | None = None,
) -> dict[str, Any]:
    """`lora_modules`: each request names one of these adapters, round-robin."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()  # type: ignore[no-untyped-call]
    add_cli_args(parser)
    args = parser.parse_args(
        [
            "--backend", "openai",
            "--base-url", base_url,
            "--endpoint", "/v1/completions",
            "--model", model,
            "--tokenizer", tokenizer,
            "--dataset-name", "random",
            "--random-input-len", str(input_len),
            "--random-output-len", str(output_len),
            "--ignore-eos",
            "--num-prompts", str(num_prompts),
            "--max-concurrency", str(concurrency),
            "--percentile-metrics", "ttft,tpot,itl",
            "--seed", str(seed),
            "--disable-tqdm",
            *(["--lora-modules", *lora_modules, "--lora-assignment", "round-robin"]
              if lora_modules else []),
        ]
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        result = main(args)
    return {k: result[k] for k in KEEP if k in result}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--model", default="tiny-mobilellama")
    p.add_argument("--tokenizer", default=".cache/models/tiny-mobilellama")
    p.add_argument("-c", type=int, default=1)
    p.add_argument("-n", type=int, default=32)
    a = p.parse_args()
    print(run_serve_benchmark(a.url, a.model, a.tokenizer, a.c, a.n))
