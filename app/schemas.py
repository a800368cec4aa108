"""OpenAI (and vLLM-extension) request and response shapes. No vllm, no torch here.

Requests are pydantic models (validated at the edge); responses are TypedDicts
built on the hot path and serialised with `json.dumps`.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypedDict

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr

# vLLM's own bounds for seeds; the engine's message encoding takes no wider int.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _encodable(text: str) -> str:
    # JSON can carry a lone UTF-16 surrogate ("\ud83d", from a string cut in
    # the middle of an emoji); neither the tokenizer nor the engine can take it.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it holds an unpaired surrogate)") from None
    return text


Text = Annotated[StrictStr, AfterValidator(_encodable)]
TokenId = Annotated[StrictInt, Field(ge=0)]
Prompt = Text | list[Text] | list[TokenId] | list[list[TokenId]]


class _Request(BaseModel):
    # Unknown fields are a 400, not silently ignored.
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Request):
    include_usage: bool = False


class CompletionRequest(_Request):
    """POST /v1/completions. Defaults follow OpenAI's."""

    model: str | None = None
    prompt: Prompt
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    best_of: int | None = Field(None, ge=1, le=128)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    # vLLM extensions.
    top_k: int | None = Field(None, ge=-1, le=INT64_MAX)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = None
    skip_special_tokens: bool = True
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    return_tokens_as_token_ids: bool = False


class TokenizeRequest(_Request):
    """POST /tokenize (vLLM's shape)."""

    model: str | None = None
    prompt: Text
    add_special_tokens: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(_Request):
    """POST /detokenize (vLLM's shape)."""

    model: str | None = None
    tokens: list[TokenId]


class CompletionLogprobs(TypedDict):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(TypedDict):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(TypedDict):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None


class ModelCard(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    parent: None
    max_model_len: int


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelCard]


class TokenizeResponse(TypedDict, total=False):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str]


class DetokenizeResponse(TypedDict):
    prompt: str
