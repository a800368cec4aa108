"""An all-zero LoRA adapter for the served model: what base-model requests
run through while adapters are served (GATEWAY_LORA_BASE_GUARD).

Why: a base request's tokens carry LoRA index -1, and vLLM's CPU LoRA ops
(`lora_b_weights[indices]` in vllm/lora/ops/torch_ops) read -1 as the last
device slot. Batched with adapter requests once every slot has been used,
a base request gets that adapter's output (measured with vLLM's own server;
vllm-ascend #3820 reports mixed base and adapter outputs on Ascend). An
adapter whose B matrices are zero adds exact zeros: the base output, from
an index that is never -1. It takes a device slot while base requests run;
the engine is given one more so that the configured number stays for real
adapters."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

NAME = "_base"  # not a valid adapter name (app.adapters.files.NAME): never a client's
ENGINE_ID = 2**31 - 1  # far from the registry's ids, which count from 1


def write_zero_adapter(target: Path, hf_config: Any) -> Path:
    """Rank 1 on q_proj of every layer, A and B all zeros, in PEFT's files."""
    h = int(hf_config.hidden_size)
    heads = int(hf_config.num_attention_heads)
    q = heads * int(getattr(hf_config, "head_dim", None) or h // heads)
    layers = int(hf_config.num_hidden_layers)
    header: dict[str, Any] = {}
    offset = 0
    for layer in range(layers):
        prefix = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        for which, shape in (("A", [1, h]), ("B", [q, 1])):
            size = shape[0] * shape[1] * 2
            header[f"{prefix}.lora_{which}.weight"] = {
                "dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size],
            }  # fmt: skip
            offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data to 8 bytes
    config = {
        "peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": ["q_proj"],
        "bias": "none", "task_type": "CAUSAL_LM", "base_model_name_or_path": "",
    }  # fmt: skip
    target.mkdir(parents=True, exist_ok=True)
    (target / "adapter_config.json").write_text(json.dumps(config))
    (target / "adapter_model.safetensors").write_bytes(
        struct.pack("<Q", len(raw)) + raw + bytes(offset)
    )
    return target
