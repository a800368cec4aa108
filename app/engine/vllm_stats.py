"""vLLM's stat loggers, for app.engine.vllm: the per-step numbers the gateway
needs (StepLogger), and vLLM's own Prometheus families on lock-free metrics
(PrometheusLogger). Both are instantiated by vLLM itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vllm.v1.metrics.loggers import PrometheusStatLogger, StatLoggerBase

from app.observability.loop_metrics import LoopCounter, LoopGauge, LoopHistogram
from app.observability.metrics import EngineStep


class StepLogger(StatLoggerBase):
    """vLLM's per-step stats, turned into plain numbers for app.observability.metrics.

    vLLM marks SchedulerStats/IterationStats unstable, so every field is read
    with a default: a renamed field degrades one figure, not the engine.
    """

    # Called on every record (the watchdog's heartbeat), with None when vLLM
    # sent no scheduler stats this time (vLLM 0.18 leaves them out on some).
    on_step: Callable[[EngineStep | None], None] = staticmethod(lambda step: None)

    def __init__(self, vllm_config: Any, engine_index: int = 0):
        scheduler = vllm_config.scheduler_config
        self.max_num_seqs = int(scheduler.max_num_seqs)
        self.max_num_batched_tokens = int(scheduler.max_num_batched_tokens)

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is None:
            self.on_step(None)
            return
        tokens = 0
        queue_times: list[float] = []
        if iteration_stats is not None:
            tokens = getattr(iteration_stats, "num_prompt_tokens", 0) + getattr(
                iteration_stats, "num_generation_tokens", 0
            )
            queue_times = [
                getattr(f, "queued_time", 0.0)
                for f in getattr(iteration_stats, "finished_requests", ())
            ]
        self.on_step(
            EngineStep(
                running=getattr(scheduler_stats, "num_running_reqs", 0),
                waiting=getattr(scheduler_stats, "num_waiting_reqs", 0),
                kv_cache_usage=getattr(scheduler_stats, "kv_cache_usage", 0.0),
                scheduled_tokens=tokens,
                max_num_seqs=self.max_num_seqs,
                max_num_batched_tokens=self.max_num_batched_tokens,
                queue_times=queue_times,
            )
        )

    def log_engine_initialized(self) -> None:
        pass


class PrometheusLogger(PrometheusStatLogger):
    """vLLM's own Prometheus stat logger (the same `vllm:*` families, labels
    and buckets) on lock-free metrics: it records once per engine step on
    the event loop, inter-token latency once per token, and was ~9% of this
    process's CPU in-process at c=8 (app.observability.loop_metrics says why)."""

    _gauge_cls = LoopGauge
    _counter_cls = LoopCounter
    _histogram_cls = LoopHistogram
    last: Any = None  # the instance vLLM made (for adapters_idle)
    # The base guard's zero adapter (app.engine.zero_lora): left out of
    # vllm:lora_requests_info, with its slot, so routers see real adapters.
    hidden_adapter: str | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        PrometheusLogger.last = self
        if self.hidden_adapter is not None and getattr(self, "gauge_lora_info", None):
            self.max_lora -= 1

    def record(self, scheduler_stats: Any, *args: Any, **kwargs: Any) -> None:
        hidden = self.hidden_adapter
        if hidden is not None and scheduler_stats is not None:
            for name in ("running_lora_adapters", "waiting_lora_adapters"):
                adapters = getattr(scheduler_stats, name, None)
                if adapters:
                    adapters.pop(hidden, None)
        super().record(scheduler_stats, *args, **kwargs)
