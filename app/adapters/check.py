"""An adapter's files, checked against the served model before the engine
sees them: PEFT LoRA config, safetensors header and sizes, tensor names,
shapes, rank, target modules, and on Ascend the fused kernel's rule (the
rank at most every output slice's width). Pure: files in, a spec or one
line out. (vLLM's own checks run in the engine core, where a mismatched
adapter ends the engine, not the request.)"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1}
_TENSOR = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$"
)
_MAX_HEADER = 16 * 2**20


class AdapterRefused(ValueError):
    """Why an adapter cannot be served, in one line; `reason` is a bounded label."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What an adapter must fit: the served LLaMA's layers and linear shapes."""

    architecture: str
    layers: int
    modules: dict[str, tuple[int, int]]  # name -> (in, out)
    slices: dict[str, int]  # name -> its output slice's width on one device

    @classmethod
    def from_config(cls, config: dict[str, Any], tensor_parallel: int = 1) -> ModelShape:
        h = int(config["hidden_size"])
        hd = int(config.get("head_dim") or h // int(config["num_attention_heads"]))
        q = int(config["num_attention_heads"]) * hd
        kv = int(config.get("num_key_value_heads") or config["num_attention_heads"]) * hd
        inter = int(config["intermediate_size"])
        modules = {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, inter),
            "up_proj": (h, inter),
            "down_proj": (inter, h),
        }
        # Column-parallel layers split their output across devices; o_proj
        # and down_proj (row-parallel) keep theirs whole.
        split = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
        slices = {
            m: out // tensor_parallel if m in split else out for m, (_, out) in modules.items()
        }
        arch = (config.get("architectures") or ["?"])[0]
        return cls(arch, int(config["num_hidden_layers"]), modules, slices)


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    rank: int
    targets: tuple[str, ...]
    digest: str  # sha256 of both files: what the adapter is


def read(path: Path) -> tuple[bytes, bytes]:
    """An adapter directory's two files (what is checked is what is served)."""
    return _read(path / CONFIG), _read(path / WEIGHTS)


def inspect(
    files: tuple[bytes, bytes], model: ModelShape, max_rank: int, ascend: bool = False
) -> AdapterSpec:
    """The adapter made of these files, or AdapterRefused saying what is wrong."""
    config_bytes, weights = files
    try:
        config = json.loads(config_bytes)
    except ValueError:
        raise AdapterRefused(f"{CONFIG} is not JSON", "config") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterRefused(f"{CONFIG}: peft_type is not LORA", "config")
    if config.get("use_dora") or config.get("modules_to_save"):
        raise AdapterRefused(f"{CONFIG}: DoRA and modules_to_save are not served", "config")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterRefused(f"{CONFIG}: r is not a positive integer", "config")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise AdapterRefused(f"{CONFIG}: target_modules is not a list of names", "config")
    for t in targets:
        if t not in model.modules:
            raise AdapterRefused(
                f"target module {t[:40]!r} is not in {model.architecture} "
                f"({', '.join(model.modules)})",
                "target",
            )
    if rank > max_rank:
        raise AdapterRefused(f"rank {rank} is above GATEWAY_MAX_LORA_RANK ({max_rank})", "rank")
    if ascend:
        for t in targets:
            if rank > model.slices[t]:
                raise AdapterRefused(
                    f"rank {rank} is above {t}'s output slice ({model.slices[t]}): the "
                    "Ascend LoRA kernel needs the rank at most every slice's width",
                    "ascend_slice",
                )
    _check_tensors(_header(weights), len(weights), model, rank, set(targets))
    digest = hashlib.sha256(config_bytes + b"\0" + weights).hexdigest()
    return AdapterSpec(rank, tuple(sorted(targets)), digest)


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise AdapterRefused(f"{file.name} is missing", "missing") from None
    except OSError as exc:
        raise AdapterRefused(f"{file.name} cannot be read ({exc.strerror})", "missing") from None


def _header(data: bytes) -> tuple[dict[str, Any], int]:
    """The safetensors header and where the data starts."""
    if len(data) < 8:
        raise AdapterRefused(f"{WEIGHTS} is not safetensors (too short)", "format")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(_MAX_HEADER, len(data) - 8):
        raise AdapterRefused(f"{WEIGHTS} is not safetensors, or is truncated", "format")
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError:
        raise AdapterRefused(f"{WEIGHTS} is not safetensors (bad header)", "format") from None
    if not isinstance(header, dict):
        raise AdapterRefused(f"{WEIGHTS} is not safetensors (bad header)", "format")
    return header, 8 + size


def _check_tensors(
    parsed: tuple[dict[str, Any], int], length: int, model: ModelShape, rank: int, targets: set[str]
) -> None:
    header, start = parsed
    end = start
    seen = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = info["dtype"], list(info["shape"]), info["data_offsets"]
            width = _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise AdapterRefused(f"{WEIGHTS}: tensor {name[:80]} is malformed", "format") from None
        if b - a != prod(shape) * width or a < 0:
            raise AdapterRefused(f"{WEIGHTS}: tensor {name[:80]} has the wrong size", "format")
        end = max(end, start + b)
        match = _TENSOR.match(name)
        if match is None:
            raise AdapterRefused(
                f"tensor {name[:80]} is not a LoRA weight of a LLaMA layer", "target"
            )
        layer, module, which = int(match[1]), match[2], match[3]
        if module not in targets or layer >= model.layers:
            raise AdapterRefused(
                f"tensor {name[:80]} is outside the model or target_modules", "target"
            )
        fan_in, fan_out = model.modules[module]
        want = [rank, fan_in] if which == "A" else [fan_out, rank]
        if shape != want:
            raise AdapterRefused(
                f"layers.{layer}.{module}.lora_{which} is {shape}; the served "
                f"{model.architecture} needs {want}",
                "shape",
            )
        seen += 1
    if seen == 0:
        raise AdapterRefused(f"{WEIGHTS} holds no LoRA weights", "format")
    if end > length:
        raise AdapterRefused(f"{WEIGHTS} is truncated ({length} of {end} bytes)", "truncated")
    if end != length:
        raise AdapterRefused(f"{WEIGHTS} has {length - end} bytes after its tensors", "format")
