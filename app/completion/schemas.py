"""OpenAI (and vLLM-extension) request and response shapes. No vllm, no torch here.

Requests are pydantic models (validated at the edge); responses are TypedDicts
built on the hot path and serialised with `json.dumps`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr

from app.config import MAX_STREAM_INTERVAL

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


class _Sampling(_Request):
    """What both endpoints take alike. Defaults follow OpenAI's."""

    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM extensions.
    top_k: int | None = Field(None, ge=-1, le=INT64_MAX)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = None
    skip_special_tokens: bool = True
    cache_salt: Text | None = None
    priority: int | None = Field(None, ge=-(2**31), le=2**31 - 1)  # lower is sooner
    stream_interval: int | None = Field(None, ge=1, le=MAX_STREAM_INTERVAL)
    # Output constraints (app.completion.constraints): OpenAI's, vLLM's, and
    # vLLM's older names; one per request.
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | Text | None = None
    guided_choice: list[Text] | None = None
    guided_regex: Text | None = None
    guided_grammar: Text | None = None


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: Prompt
    # 0 only with echo: score the prompt (its logprobs), generate nothing.
    max_tokens: int | None = Field(16, ge=0)
    best_of: int | None = Field(None, ge=1, le=128)
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False
    suffix: str | None = None
    # vLLM extensions.
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    return_tokens_as_token_ids: bool = False


class TextPart(_Request):
    type: Literal["text"]
    text: Text


class OtherPart(BaseModel):
    """A content part of another type (image_url, input_audio, file, ...):
    accepted by the schema so that the refusal can name what is unsupported."""

    model_config = ConfigDict(extra="allow")
    type: StrictStr


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart | OtherPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, object]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Accepted by the schema, refused by name: a base model has no tool calling.
    tools: list[dict[str, object]] | None = None
    tool_choice: object | None = None
    functions: list[dict[str, object]] | None = None
    function_call: object | None = None
    parallel_tool_calls: bool | None = None


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


class PromptTokensDetails(TypedDict):
    cached_tokens: int


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ModelCard(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    parent: str | None  # an adapter's base model
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
