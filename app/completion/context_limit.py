"""The context-limit rules, all of them, as pure functions: prompt +
max_tokens must fit in max_model_len. An over-long prompt is truncated on
the left (BOS kept) or refused, per GATEWAY_TRUNCATION, after vLLM's
truncate_prompt_tokens (fit_prompt); an over-long conversation loses its
oldest messages whole, or is refused (fit_messages)."""

from __future__ import annotations

from collections.abc import Callable

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


Message = dict[str, str]  # {"role", "content"}: a chat message as the template sees it


def fit_messages(
    messages: list[Message],
    encode: Callable[[list[Message]], list[int]],
    max_tokens: int | None,
    limit: int,
    *,
    policy: Truncation,
) -> tuple[list[int], int, int]:
    """A conversation fitted to the context: (prompt ids, messages dropped,
    tokens dropped). `encode` renders messages and tokenises them; the room
    for the completion is `max_tokens`, or one token when unset (it then
    takes what is left).

    Under `left`, the oldest messages that are neither system messages nor
    the last one are dropped whole, as few as make it fit; under `error`,
    or when even that does not fit, ContextLengthExceeded with the counts."""
    completion = max_tokens or 1
    budget = limit - completion
    full = encode(messages)
    if len(full) <= budget:
        return full, 0, 0
    if policy == "error":
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens. However, you "
            f"requested {len(full) + completion} tokens ({len(full)} in the "
            f"{len(messages)} messages, {completion} for the completion). Please "
            f"shorten the conversation or the completion length.",
            param="messages",
        )
    droppable = [i for i, m in enumerate(messages[:-1]) if m["role"] != "system"]

    def without(k: int) -> list[int]:
        gone = set(droppable[:k])
        return encode([m for i, m in enumerate(messages) if i not in gone])

    # The fewest messages to drop: the prompt shrinks as more go (binary search).
    lo, hi = 1, len(droppable)
    best: tuple[int, list[int]] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        ids = without(mid)
        if len(ids) <= budget:
            best, hi = (mid, ids), mid - 1
        else:
            lo = mid + 1
    if best is None:
        kept = without(len(droppable))
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens. Even with only the "
            f"system messages and the last message, the prompt has {len(kept)} tokens and "
            f"{completion} are requested for the completion. Please shorten them.",
            param="messages",
        )
    dropped, ids = best
    return ids, dropped, len(full) - len(ids)
