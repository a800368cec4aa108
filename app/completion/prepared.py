"""A request made ready to run, as plain data: its prompts (tokenised and
fitted), sampling options, and how to present it; the served model's
identity and limits. Built by app.completion.prepare, read by everything after it."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from app.adapters.registry import Adapter
from app.engine.protocol import SamplingOptions
from app.errors import InvalidRequest
from app.observability.record import RequestRecord

TRUNCATED_HEADER = "x-truncated-prompt-tokens"
TRUNCATED_MESSAGES_HEADER = "x-truncated-messages"


@dataclass(slots=True)
class PreparedPrompt:
    token_ids: list[int]
    text: str | None  # the caller's text when it was sent whole, for echo
    dropped: int = 0


@dataclass(slots=True)
class PreparedCompletion:
    """A validated request: what to run and how to present it."""

    request_id: str
    created: int
    arrival: float  # time.monotonic() at arrival, for latency metrics
    deadline: float | None  # time.monotonic() by which it must end (request_timeout)
    model: str
    prompts: list[PreparedPrompt]
    options: SamplingOptions
    n: int  # choices returned per prompt
    echo: bool
    logprobs: int | None  # top-k the client asked for, None for no logprobs
    include_usage: bool
    tokens_as_ids: bool = False  # vLLM's return_tokens_as_token_ids: "token_id:<id>"
    chat: bool = False  # answered as chat.completion(.chunk)
    dropped_messages: int = 0  # chat: oldest messages dropped to fit
    cache_salt: str | None = None  # the prefix-cache partition (Preparer.cache_salt)
    stream_interval: int = 1  # at most this many tokens per stream event after the first
    echo_only: bool = False  # max_tokens 0 with echo: the prompt scored, its output left out
    priority: int = 0  # effective (lower is sooner): in our queue and the engine's
    flow: Hashable = None  # whose share it takes in fair queueing (its tenant)
    weight: float = 1.0  # the flow's weight
    share: float | None = None  # the part of the queue the flow may hold (tenants)
    record: RequestRecord | None = None  # what the usage log, budgets and traces are told
    adapter: Adapter | None = None  # the task adapter it runs through (None: the base model)

    @property
    def budget_tokens(self) -> int:
        """What admission charges: every prompt, and every sample's max_tokens."""
        return self.prompt_tokens + self.options.max_tokens * self.options.n * len(self.prompts)

    @property
    def dropped_tokens(self) -> int:
        return sum(p.dropped for p in self.prompts)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.token_ids) for p in self.prompts)

    def headers(self) -> dict[str, str]:
        headers = {TRUNCATED_HEADER: str(self.dropped_tokens)}
        if self.chat:
            headers[TRUNCATED_MESSAGES_HEADER] = str(self.dropped_messages)
        return headers


@dataclass(frozen=True, slots=True)
class ServedModel:
    """The model this gateway serves, and its limits."""

    name: str  # what answers call it
    max_model_len: int
    vocab_size: int
    aliases: tuple[str, ...] = ()  # other ids clients may send (GATEWAY_SERVED_MODEL_NAME)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def check_tokens(self, ids: list[int], param: str) -> None:
        """400 unless every token id is in the vocabulary."""
        if ids and not 0 <= min(ids) <= max(ids) < self.vocab_size:
            raise InvalidRequest(
                f"Token ids must be in [0, {self.vocab_size}), the vocabulary.", param=param
            )
