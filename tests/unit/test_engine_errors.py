"""The vLLM adapter's error translation (app/engine/vllm.py), with vLLM's
own exception types raised by a stand-in for AsyncLLM: the engine's death is
a 503, vLLM's refusal of a request a 400 (its first line only), anything
else a 500 that is logged with its traceback. The first two are also shown
on the real engine (tests/lifecycle engine death, tests/e2e engine-side
validation); no real fault gives the third on demand."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from vllm.v1.engine.exceptions import EngineDeadError

from app.engine.protocol import SamplingOptions
from app.engine.vllm import VllmEngine
from app.errors import EngineFailure, GatewayError, InvalidRequest, Unavailable

pytestmark = pytest.mark.engine  # imports vLLM (slow): not in make test-fast


class Raises:
    """AsyncLLM's generate, failing as told."""

    def __init__(self, error: Exception):
        self.error = error

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


def run(error: Exception) -> GatewayError:
    engine = object.__new__(VllmEngine)  # the adapter around a stand-in engine
    engine._llm = Raises(error)  # type: ignore[assignment]
    engine._by_priority = False
    engine._guard = None  # no adapters loaded

    async def consume() -> None:
        async for _ in engine.generate([1, 2], SamplingOptions(max_tokens=1), "req-7"):
            pass

    with pytest.raises(GatewayError) as exc:
        asyncio.run(consume())
    return exc.value


def test_the_engines_death_is_unavailable() -> None:
    error = run(EngineDeadError())
    assert isinstance(error, Unavailable) and int(error.status) == 503


def test_a_request_vllm_refuses_is_a_400_with_its_first_line() -> None:
    error = run(ValueError("best_of must be 1 when using greedy sampling.\ndetails: x"))
    assert isinstance(error, InvalidRequest) and int(error.status) == 400
    assert error.message == "best_of must be 1 when using greedy sampling."


def test_anything_else_is_a_500_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="app.engine.vllm"):
        error = run(RuntimeError("CUDA-ish internals"))
    assert isinstance(error, EngineFailure) and int(error.status) == 500
    assert error.message == "The inference engine failed this request."
    assert "internals" not in error.message
    [record] = caplog.records
    assert record.getMessage() == "engine request req-7 failed"
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
