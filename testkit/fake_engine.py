"""A scripted engine: faults no real engine gives on demand (an error event
mid-stream, a hang, a 500), and the fast pipeline tests (tests/unit). Every
behaviour it stands in for also has a real-engine test (tests/e2e,
tests/lifecycle)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from app.engine.protocol import AdapterRef, SamplingOptions, refusal
from app.errors import EngineFailure


@dataclass
class Lp:
    """vLLM's Logprob: the value and the token's text."""

    logprob: float
    decoded_token: str | None = None


Position = dict[int, Lp]


@dataclass
class Out:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[Position] | None = None
    cumulative_logprob: float | None = None


@dataclass
class ReqOut:
    outputs: list[Out]
    finished: bool = False
    prompt_logprobs: list[Position | None] | None = None


class CharTokenizer:
    """One token per character; ids 0-2 are the special tokens, written out
    unless skipped (as a LLaMA tokenizer does, by default too)."""

    SPECIAL = ("<unk>", "<s>", "</s>")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1] if add_special_tokens else []) + [3 + ord(c) % 1000 for c in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        special = ("",) * 3 if skip_special_tokens else self.SPECIAL
        return "".join(special[i] if i <= 2 else chr(i - 3) for i in ids)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.decode([i]) for i in ids]


# A script: (prompt_token_ids, options) -> async iterator of outputs, may raise.
Script = Callable[[list[int], SamplingOptions], AsyncIterator[ReqOut]]


@dataclass
class FakeEngine:
    script: Script
    max_model_len: int = 64
    vocab_size: int = 1003
    max_num_seqs: int = 4
    max_logprobs: int = 5
    bos_token_id: int | None = 1
    tokenizer: CharTokenizer = field(default_factory=CharTokenizer)
    errored: bool = False
    # Kept apart: a request whose output stream was closed or cancelled (how
    # the gateway stops one request) and one given to abort() (how it stops
    # every request at once: a stall, a drain's end).
    closed: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    capture_sizes: list[int] = field(default_factory=list)
    priorities: list[int] = field(default_factory=list)  # each generate()'s priority
    trace_headers: list[dict[str, str] | None] = field(default_factory=list)
    adapters: list[AdapterRef | None] = field(default_factory=list)  # each generate()'s adapter
    loaded: dict[int, AdapterRef] = field(default_factory=dict)  # add_adapter'd, not removed
    idle_marks: int = 0  # adapters_idle() calls
    refuse_adapters: bool = False  # add_adapter fails (the engine cannot load it)

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        cache_salt: str | None = None,
        priority: int = 0,
        trace_headers: dict[str, str] | None = None,
        adapter: AdapterRef | None = None,
    ) -> AsyncGenerator[ReqOut, None]:
        self.priorities.append(priority)
        self.trace_headers.append(trace_headers)
        self.adapters.append(adapter)
        try:
            async for out in self.script(prompt_token_ids, options):
                yield out
        except (asyncio.CancelledError, GeneratorExit):
            self.closed.append(request_id)
            raise
        except ValueError as exc:  # vLLM's refusal of bad parameters, as the adapter tells it
            raise refusal(str(exc), options) from exc

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def add_adapter(self, adapter: AdapterRef) -> None:
        if self.refuse_adapters:
            raise EngineFailure("The engine could not load it (scripted).")
        self.loaded[adapter.id] = adapter

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        self.loaded.pop(adapter.id, None)

    def adapters_idle(self) -> None:
        self.idle_marks += 1

    def info(self) -> dict[str, Any]:
        graph = {"cudagraph_mode": "PIECEWISE", "capture_sizes": self.capture_sizes}
        return {"device": "fake", "engine_args": {}, "versions": {}, "graph": graph}

    def shutdown(self) -> None:
        pass
