"""What the gateway needs from an engine, as structural types.

vLLM's `RequestOutput`, `CompletionOutput`, `Logprob` and tokenizer satisfy
these protocols as they are, so outputs flow through without conversion; a
fake engine in unit tests only has to provide the same attributes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from app.errors import InvalidConstraint, InvalidRequest


class Logprob(Protocol):
    @property
    def logprob(self) -> float: ...
    @property
    def decoded_token(self) -> str | None: ...


# One position: the sampled (or prompt) token and the top-k alternatives.
PositionLogprobs = Mapping[int, Logprob]


class CompletionOutput(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def token_ids(self) -> Sequence[int]: ...
    @property
    def logprobs(self) -> Sequence[PositionLogprobs] | None: ...
    @property
    def cumulative_logprob(self) -> float | None: ...
    @property
    def finish_reason(self) -> str | None: ...


class RequestOutput(Protocol):
    @property
    def prompt_logprobs(self) -> Sequence[PositionLogprobs | None] | None: ...
    @property
    def outputs(self) -> Sequence[CompletionOutput]: ...
    @property
    def finished(self) -> bool: ...


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...
    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...


StructuredKind = Literal["json", "json_object", "choice", "regex", "grammar"]


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """One output constraint the engine enforces while decoding (vLLM's
    StructuredOutputsParams field of the same name): a JSON schema (dict),
    any JSON object (True), one of the choices (list), a regex or an EBNF
    grammar (str). `param` is where the request put it, for errors."""

    kind: StructuredKind
    value: Any
    param: str
    disable_any_whitespace: bool = False


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """Sampling for one prompt; field names are vLLM's SamplingParams names.

    None means "the engine's default". Outputs always arrive as deltas, one
    per engine step, streaming or not (so every request is timed per token).
    """

    max_tokens: int
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    structured: StructuredOutput | None = None


@dataclass(frozen=True, slots=True)
class AdapterRef:
    """A LoRA adapter as the engine knows it: `id` is unique per content
    (a new version, or new files under the same name, get a new one)."""

    name: str
    id: int
    path: str


class Engine(Protocol):
    @property
    def max_model_len(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def max_num_seqs(self) -> int: ...
    @property
    def max_logprobs(self) -> int: ...
    @property
    def bos_token_id(self) -> int | None: ...
    @property
    def tokenizer(self) -> Tokenizer: ...
    @property
    def errored(self) -> bool: ...

    def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        cache_salt: str | None = None,
        priority: int = 0,
        trace_headers: dict[str, str] | None = None,
        adapter: AdapterRef | None = None,
    ) -> AsyncGenerator[RequestOutput, None]:
        """Outputs for one prompt. Raises app.errors types; closing or
        cancelling it aborts the request. `cache_salt` partitions the prefix
        cache: prompts with different salts never share cached blocks.
        `priority` (lower sooner) orders the engine's waiting queue when it
        schedules by priority, and is ignored otherwise. `trace_headers`
        (W3C trace context) make the engine's own spans, when its tracing is
        on, children of the request's. `adapter`: run through that LoRA
        adapter (loaded on demand from its path if the engine dropped it)."""
        ...

    async def add_adapter(self, adapter: AdapterRef) -> None:
        """Load an adapter into the engine's host cache (EngineFailure if it cannot)."""
        ...

    async def remove_adapter(self, adapter: AdapterRef) -> None: ...

    def adapters_idle(self) -> None:
        """No adapter request is running or waiting: say so in the engine's own
        adapter metric (vLLM's keeps its last busy sample while idle)."""
        ...

    async def abort(self, request_id: str) -> None: ...

    def info(self) -> dict[str, Any]:
        """Device, effective engine arguments and package versions, for /v1/gateway/info."""
        ...

    def shutdown(self) -> None: ...


def refusal(why: str, options: SamplingOptions) -> InvalidRequest:
    """The engine refused a request's parameters (`why`: its message's first
    line), told once for every engine: a refused output constraint becomes
    a 400 naming the field it came from, with only the first clause of the
    grammar backend's text (the rest quotes the constraint back)."""
    structured = options.structured
    if structured is None:
        return InvalidRequest(why)
    return InvalidConstraint(
        f"{structured.param} was refused by the engine's grammar backend "
        f"({why.split(':', 1)[0][:120]}).",
        param=structured.param,
    )
