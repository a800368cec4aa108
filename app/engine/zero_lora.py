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
adapters.

Only when it matters (BaseGuard): a batch with any adapter in it runs the
LoRA kernels over every token anyway, but a batch of base requests alone
runs none, and the zero adapter would make it pay them (~39% of base-only
tok/s on the CPU fixture). So base requests take the zero adapter only
while adapter requests are in the engine (and LINGER seconds after), or
while a guarded base request is (its zero adapter runs the kernels for the
whole batch, so a plain request beside it would read a real slot); an
adapter request that finds base requests running without it waits for
them to end first: a batch never holds both. Requests count until the
engine ends them, not until their readers do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

NAME = "_base"  # not a valid adapter name (app.adapters.files.NAME): never a client's
ENGINE_ID = 2**31 - 1  # far from the registry's ids, which count from 1
LINGER = 10.0  # seconds base requests keep the zero adapter after the last adapter request


class BaseGuard:
    """Which base requests run through the zero adapter, and when an adapter
    request may start: never an unguarded base request beside an adapter
    request, nor beside a guarded one (whose zero adapter runs the LoRA
    kernels for the whole batch), in the engine at once.

    A request counts until the engine ends it (its finished output, or
    `in_engine` saying it is gone although its reader has not caught up),
    not until whoever reads it lets go: a slow reader holds nobody up."""

    def __init__(
        self,
        linger: float = LINGER,
        in_engine: Callable[[str], bool] | None = None,
        poll: float = 0.05,
    ):
        self.linger = linger
        self.adapters = 0  # adapter requests in the engine, or waiting to enter it
        # Base requests in the engine without / with the zero adapter: request
        # id -> whether it has produced (so it surely entered the engine).
        self.plain: dict[str, bool] = {}
        self.guarded: dict[str, bool] = {}
        self.guarded_until = 0.0
        self._in_engine = in_engine
        self._poll = poll
        self._no_plain = asyncio.Event()
        self._no_plain.set()

    def base(self, request_id: str) -> bool:
        """A base request starts: True if it must take the zero adapter."""
        if self.adapters or time.monotonic() < self.guarded_until or self._still(self.guarded):
            self.guarded[request_id] = False
            return True
        self.plain[request_id] = False
        self._no_plain.clear()
        return False

    def produced(self, request_id: str, guarded: bool) -> None:
        """Its first output: it is in the engine (so `in_engine` may rule it out)."""
        table = self.guarded if guarded else self.plain
        if request_id in table:
            table[request_id] = True

    def base_done(self, request_id: str, guarded: bool) -> None:
        """The engine ended it (or it never entered); said once or more."""
        if guarded:
            self.guarded.pop(request_id, None)
        elif self.plain.pop(request_id, None) is not None and not self.plain:
            self._no_plain.set()

    async def adapter(self) -> None:
        """An adapter request starts: base requests from now on are guarded;
        those already running unguarded end first."""
        self.adapters += 1
        try:
            while self._still(self.plain):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._no_plain.wait(), self._poll)
        except BaseException:
            self.adapter_done()
            raise

    def adapter_done(self) -> None:
        self.adapters -= 1
        if self.adapters == 0:
            self.guarded_until = time.monotonic() + self.linger

    def _still(self, table: dict[str, bool]) -> bool:
        """Whether any request of `table` is in the engine; those the engine
        has ended (while their readers lag) are counted out."""
        if table and self._in_engine is not None:
            for request_id in [r for r, produced in table.items() if produced]:
                if not self._in_engine(request_id):
                    del table[request_id]
            if table is self.plain and not table:
                self._no_plain.set()
        return bool(table)


class Ticket:
    """One request's place in the guard's counts, given up once: at its
    finished output (the engine's end), or when its stream closes (an abort)."""

    __slots__ = ("adapter", "first", "guard", "guarded", "held", "request_id")

    def __init__(self, guard: BaseGuard, request_id: str, adapter: bool, guarded: bool):
        self.guard, self.request_id = guard, request_id
        self.adapter, self.guarded = adapter, guarded
        self.held, self.first = True, True

    def saw(self, finished: bool) -> None:
        """An output of the request."""
        if finished:
            self.done()
        elif self.first:
            self.first = False
            if not self.adapter:
                self.guard.produced(self.request_id, self.guarded)

    def done(self) -> None:
        if self.held:
            self.held = False
            if self.adapter:
                self.guard.adapter_done()
            else:
                self.guard.base_done(self.request_id, self.guarded)


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
