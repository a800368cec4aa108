"""Warmup: real generations between engine construction and `ready`.

On Ascend the first steps at each batch size and the first long prefill are
slow (graph replay set-up, kernel selection, allocator growth); running them
before `ready` keeps that cost off the first users.
- minimal: one request at batch 1, greedy, and one sampled.
- full: batch 1, a decode batch of every captured graph size up to
  `max_num_seqs` (on Ascend: the ACL graph capture sizes; eager engines have
  none) and of `max_num_seqs` itself, one prefill of `max_model_len - 1`
  tokens, one constrained generation and one with prompt logprobs: the
  first of each pays a one-time cost in the engine (the grammar backend's
  tokenizer data; ~11 s for the first prompt logprobs on the CPU fixture),
  which would otherwise land on the first user's time to first token.
"""

from __future__ import annotations

import asyncio
import logging
import time

from app.engine.protocol import Engine, SamplingOptions, StructuredOutput

logger = logging.getLogger(__name__)

# The cheapest constraint: it makes the grammar backend load the tokenizer's
# vocabulary, which every later constraint reuses.
WARM_CONSTRAINT = StructuredOutput("choice", ["yes", "no"], "warmup")


async def generate_once(
    engine: Engine,
    prompt: list[int],
    max_tokens: int,
    request_id: str,
    structured: StructuredOutput | None = None,
    logprobs: int | None = None,
    temperature: float = 0.0,
) -> None:
    """One generation to its end (warmup, the watchdog's canary), greedy
    unless `temperature` says otherwise; `logprobs` asks them for the prompt
    and the output too."""
    options = SamplingOptions(
        max_tokens=max_tokens,
        temperature=temperature,
        # A constraint ends the output itself (its grammar's end is an EOS).
        ignore_eos=structured is None,
        structured=structured,
        logprobs=logprobs,
        prompt_logprobs=logprobs,
    )
    async for _ in engine.generate(prompt, options, request_id):
        pass


def synthetic_prompt(engine: Engine, seed: int, length: int) -> list[int]:
    """A valid token-id prompt, distinct per seed so prefix caching cannot skip it."""
    bos = [engine.bos_token_id] if engine.bos_token_id is not None else []
    span = min(engine.vocab_size, 32000) - 100
    body = [100 + (seed * 7919 + i * 31) % span for i in range(length - len(bos))]
    return bos + body


def batch_sizes(engine: Engine) -> list[int]:
    """Decode batch sizes to exercise: every captured graph size the engine can
    fill (up to max_num_seqs), and max_num_seqs itself; 1 runs separately."""
    captured = engine.info().get("graph", {}).get("capture_sizes") or []
    top = engine.max_num_seqs
    return sorted({s for s in captured if 1 < s <= top} | {top} - {1})


async def warm_up(engine: Engine, level: str) -> None:
    if level == "none":
        return
    steps: list[tuple[str, float]] = []

    async def step(
        name: str,
        *runs: tuple[list[int], int],
        structured: StructuredOutput | None = None,
        logprobs: int | None = None,
        temperature: float = 0.0,
    ) -> None:
        t0 = time.monotonic()
        await asyncio.gather(
            *(
                generate_once(engine, p, n, f"warmup-{name}-{i}", structured, logprobs, temperature)
                for i, (p, n) in enumerate(runs)
            )
        )
        steps.append((name, time.monotonic() - t0))

    await step("batch1", (synthetic_prompt(engine, 0, 16), 8))
    # The first sampled (temperature > 0) request pays a one-time set-up of the
    # sampler: ~10 s on vLLM 0.18's CPU backend, measured.
    await step("sampled", (synthetic_prompt(engine, 4, 16), 4), temperature=1.0)
    if level == "full":
        for batch in batch_sizes(engine):
            await step(
                f"batch{batch}", *((synthetic_prompt(engine, i + 1, 16), 4) for i in range(batch))
            )
        await step("long-prefill", (synthetic_prompt(engine, 0, engine.max_model_len - 1), 1))
        await step("structured", (synthetic_prompt(engine, 2, 16), 4), structured=WARM_CONSTRAINT)
        await step("scoring", (synthetic_prompt(engine, 3, 16), 1), logprobs=1)
    logger.info("warmup (%s): %s", level, ", ".join(f"{n} {s:.2f}s" for n, s in steps))
