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
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_DTYPES = {"F64", "F32", "F16", "BF16"}  # what vLLM loads LoRA weights as
_TENSOR = re.compile(
    r"base_model\.model\.model\.layers\.(\d{1,6})\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight"
)
_MAX_HEADER = 16 * 2**20
_MAX_CONFIG = 2**20
MAX_WEIGHTS = 8 * 2**30  # without a model's shape to bound it (ModelShape.weights_limit)


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

    def weights_limit(self, max_rank: int) -> int:
        """The largest weights file an adapter of this model can be: every
        module at `max_rank` in 8-byte floats, and the largest header."""
        per_layer = sum(fan_in + fan_out for fan_in, fan_out in self.modules.values())
        return per_layer * max_rank * self.layers * 8 + 8 + _MAX_HEADER


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    rank: int
    targets: tuple[str, ...]
    digest: str  # sha256 of both files: what the adapter is


def read(path: Path, limit: int = MAX_WEIGHTS) -> tuple[bytes, bytes]:
    """An adapter directory's two files (what is checked is what is served),
    each looked at before it is read: a regular file, at most `limit` bytes
    (a FIFO, a device or a huge file is a refusal, not a read that never ends)."""
    return _read(path / CONFIG, _MAX_CONFIG), _read(path / WEIGHTS, limit)


def inspect(
    files: tuple[bytes, bytes], model: ModelShape, max_rank: int, ascend: bool = False
) -> AdapterSpec:
    """The adapter made of these files, or AdapterRefused saying what is wrong."""
    config_bytes, weights = files
    try:
        config = json.loads(config_bytes)
    except (ValueError, RecursionError):
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
    _check_tensors(_tensors(weights), model, rank, set(targets))
    digest = hashlib.sha256(config_bytes + b"\0" + weights).hexdigest()
    return AdapterSpec(rank, tuple(sorted(targets)), digest)


def _read(file: Path, limit: int) -> bytes:
    try:
        st = file.stat()  # follows a symlink: what would be read
        if not stat.S_ISREG(st.st_mode):
            raise AdapterRefused(f"{file.name} is not a regular file", "format")
        if st.st_size > limit:
            raise AdapterRefused(f"{file.name} is larger than {limit} bytes", "format")
        with open(file, "rb") as f:
            data = f.read(limit + 1)  # a file that grew since: still bounded
    except FileNotFoundError:
        raise AdapterRefused(f"{file.name} is missing", "missing") from None
    except OSError as exc:
        raise AdapterRefused(f"{file.name} cannot be read ({exc.strerror})", "missing") from None
    if len(data) > limit:
        raise AdapterRefused(f"{file.name} is larger than {limit} bytes", "format")
    return data


def _tensors(data: bytes) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of each tensor, as the safetensors library reads
    the file (offsets, overlaps, sizes and the file's length are its checks)."""
    if len(data) < 8:
        raise AdapterRefused(f"{WEIGHTS} is not safetensors (too short)", "format")
    (size,) = struct.unpack("<Q", data[:8])
    if size > _MAX_HEADER:
        raise AdapterRefused(f"{WEIGHTS} is not safetensors (header too large)", "format")
    try:
        tensors = safetensors.deserialize(data)  # type: ignore[no-untyped-call]
        return [(name, t["dtype"], list(t["shape"])) for name, t in tensors]
    except Exception as exc:  # SafetensorError, or anything its binding raises
        if _short(data, size):
            raise AdapterRefused(f"{WEIGHTS} is truncated", "truncated") from None
        why = str(exc).removeprefix("Error while deserializing: ").split("\n")[0][:120]
        raise AdapterRefused(f"{WEIGHTS} is not safetensors ({why})", "format") from None


def _short(data: bytes, size: int) -> bool:
    """Whether a refused file is a good one cut short: its header whole and
    its tensors' offsets reaching past its end (otherwise it is malformed)."""
    if 8 + size > len(data):
        return False
    try:
        header = json.loads(data[8 : 8 + size])
        ends = [t["data_offsets"][1] for n, t in header.items() if n != "__metadata__"]
        return (
            bool(ends)
            and all(isinstance(e, int) for e in ends)
            and max(ends) > len(data) - 8 - size
        )
    except Exception:
        return False


def _check_tensors(
    tensors: list[tuple[str, str, list[int]]], model: ModelShape, rank: int, targets: set[str]
) -> None:
    pairs: dict[tuple[int, str], set[str]] = {}
    for name, dtype, shape in tensors:
        if dtype not in _DTYPES:
            raise AdapterRefused(f"{WEIGHTS}: tensor {name[:80]} is {dtype[:16]}", "format")
        match = _TENSOR.fullmatch(name)
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
        pairs.setdefault((layer, module), set()).add(which)
    if not pairs:
        raise AdapterRefused(f"{WEIGHTS} holds no LoRA weights", "format")
    for (layer, module), have in sorted(pairs.items()):
        if have != {"A", "B"}:
            lacking = "B" if "A" in have else "A"
            raise AdapterRefused(
                f"layers.{layer}.{module} has no lora_{lacking} beside its lora_{min(have)}",
                "format",
            )
