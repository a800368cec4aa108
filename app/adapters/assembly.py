"""The adapter registry of one gateway, put together from its settings and
the built engine (only when adapters are configured: otherwise nothing)."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from app.adapters.check import ModelShape
from app.adapters.files import Staging
from app.adapters.registry import Adapters
from app.config import Settings
from app.engine.profiles import lora_limits
from app.engine.protocol import Engine
from app.observability.adapter_metrics import AdapterMetrics


def build_adapters(
    settings: Settings, engine: Engine, registry: CollectorRegistry
) -> Adapters | None:
    if not settings.lora_enabled:
        return None
    info = engine.info()
    device = str(info.get("device", "cpu"))
    args = info.get("engine_args") or {}
    limits = lora_limits(settings, device if device in ("cpu", "npu") else "cpu")
    config = json.loads((Path(settings.model) / "config.json").read_text())
    shape = ModelShape.from_config(config, int(args.get("tensor_parallel_size", 1)))
    return Adapters(
        engine=engine,
        shape=shape,
        max_rank=int(args.get("max_lora_rank", limits["max_lora_rank"])),
        # The configured slots (the engine may have one more: the base guard's).
        max_loras=limits["max_loras"],
        max_cpu_loras=limits["max_cpu_loras"],
        staging=Staging(Path(settings.data_dir)),
        metrics=AdapterMetrics(registry, settings.model_name),
        lora_dir=settings.lora_dir,
        modules=dict(settings.lora_modules),
        ascend=device == "npu",
    )
