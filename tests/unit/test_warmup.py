"""Warmup covers the captured graph sizes the engine can fill."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.engine.protocol import SamplingOptions
from app.engine.warmup import batch_sizes, warm_up
from testkit.fake_engine import FakeEngine, Out, ReqOut


async def one_token(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
    yield ReqOut([Out(0, "x", [5], finish_reason="length")], finished=True)


def test_batch_sizes_are_the_captured_sizes_up_to_max_num_seqs() -> None:
    engine = FakeEngine(
        one_token, max_num_seqs=48, capture_sizes=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    )
    assert batch_sizes(engine) == [2, 4, 8, 16, 32, 48]  # type: ignore[arg-type]
    assert batch_sizes(FakeEngine(one_token, max_num_seqs=8)) == [8]  # type: ignore[arg-type]
    assert batch_sizes(FakeEngine(one_token, max_num_seqs=1)) == []  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_full_warmup_runs_every_size_and_a_long_prefill(anyio_backend: str) -> None:
    seen: list[tuple[int, int]] = []
    constrained: list[SamplingOptions] = []
    temperatures: list[float | None] = []

    async def record(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
        if options.structured is not None or options.prompt_logprobs is not None:
            constrained.append(options)
        else:
            seen.append((len(ids), options.max_tokens))
            temperatures.append(options.temperature)
        yield ReqOut([Out(0, "x", [5], finish_reason="length")], finished=True)

    engine = FakeEngine(record, max_num_seqs=8, capture_sizes=[1, 2, 4, 8, 16])
    await warm_up(engine, "full")  # type: ignore[arg-type]
    decodes = [n for n, t in seen if t == 4]
    assert len(decodes) == 1 + 2 + 4 + 8  # one sampled, then batches of 2, 4 and 8
    assert (engine.max_model_len - 1, 1) in seen  # the long prefill
    assert all(0 < n <= engine.max_model_len for n, _ in seen)
    # One constrained generation and one scoring, so the grammar backend and the
    # prompt-logprobs path have paid their first-use cost before ready.
    kinds = [(o.structured and o.structured.kind, o.prompt_logprobs) for o in constrained]
    assert kinds == [("choice", None), (None, 1)]
    assert constrained[0].ignore_eos is False
    # One sampled generation: the sampler's first-use cost, before ready.
    assert temperatures.count(1.0) == 1 and temperatures[0] == 0.0
    seen.clear()
    await warm_up(engine, "none")  # type: ignore[arg-type]
    assert seen == []
