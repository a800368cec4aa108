"""The context-limit rules, as pure functions: prompt + max_tokens must fit
in max_model_len; an over-long prompt is truncated on the left (BOS kept) or
refused, per GATEWAY_TRUNCATION; vLLM's truncate_prompt_tokens applies first."""

from __future__ import annotations

from app.config import Truncation
from app.errors import ContextLengthExceeded


def check_max_tokens(max_tokens: int, limit: int) -> None:
    if max_tokens >= limit:
        raise ContextLengthExceeded(
            f"max_tokens must be less than this model's maximum context length of "
            f"{limit} tokens (it leaves no room for a prompt); you requested {max_tokens}.",
            param="max_tokens",
        )


def _keep_newest(ids: list[int], budget: int, bos: int | None) -> list[int]:
    # Keep BOS (the model was trained with it) and the newest tokens.
    if bos is not None and ids[0] == bos and budget >= 2:
        return [bos, *ids[len(ids) - budget + 1 :]]
    return ids[len(ids) - budget :]


def fit_prompt(
    ids: list[int],
    max_tokens: int,
    limit: int,
    *,
    policy: Truncation,
    truncate_to: int | None = None,
    bos: int | None = None,
) -> list[int]:
    """The prompt tokens to run: `ids` itself when it fits, else the kept
    tokens (the newest, after BOS if the prompt starts with it).

    The client's explicit `truncate_to` (vLLM's truncate_prompt_tokens)
    applies first, under either policy, as vLLM applies it; the policy then
    decides what happens to a prompt that still does not fit."""
    if truncate_to is not None and len(ids) > truncate_to:
        ids = _keep_newest(ids, truncate_to, bos)
    if len(ids) + max_tokens <= limit:
        return ids
    if policy == "error":
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens. However, you "
            f"requested {len(ids) + max_tokens} tokens ({len(ids)} in the prompt, "
            f"{max_tokens} for the completion). Please reduce the prompt or the "
            f"completion length.",
            param="prompt",
        )
    return _keep_newest(ids, limit - max_tokens, bos)
