"""Properties of the context-limit rules (app/completion/context_limit.py), checked by hypothesis
over prompts, limits, max_tokens, truncate_prompt_tokens and BOS, and over
conversations fitted by whole messages.

The limit here is small (64, not the model's 2048): hypothesis draws short
lists far more often than long ones, and with a 2048 limit a prompt that
needs truncating was drawn so rarely that reversing the truncation rule
still passed (mutation testing showed it). The rules do not depend on the
limit's size."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.completion.context_limit import Message, check_max_tokens, fit_messages, fit_prompt
from app.errors import ContextLengthExceeded

BOS = 1
LIMIT = 64

token_ids = st.lists(st.integers(0, 31_999), min_size=1, max_size=3 * LIMIT)
with_bos = token_ids.map(lambda ids: [BOS, *ids])
prompts = st.one_of(token_ids, with_bos)
max_tokens = st.integers(1, LIMIT - 1)
truncate_to = st.one_of(st.none(), st.integers(1, 3 * LIMIT))


@given(prompts, max_tokens, truncate_to)
def test_left_truncation_always_fits_and_keeps_the_newest(
    ids: list[int], max_tok: int, trunc: int | None
) -> None:
    kept = fit_prompt(ids, max_tok, LIMIT, policy="left", truncate_to=trunc, bos=BOS)
    budget = min(LIMIT - max_tok, trunc if trunc is not None else LIMIT)
    assert len(kept) + max_tok <= LIMIT  # the context limit holds
    assert len(kept) == min(len(ids), budget)  # nothing dropped that fits
    if len(kept) == len(ids):
        assert kept == ids  # untouched when it fits
        return
    if ids[0] == BOS and budget >= 2:
        assert kept[0] == BOS  # BOS survives truncation
        assert kept[1:] == ids[len(ids) - len(kept) + 1 :]  # then the newest tokens
    else:
        assert kept == ids[len(ids) - len(kept) :]


@given(prompts, max_tokens)
def test_error_policy_refuses_exactly_what_does_not_fit(ids: list[int], max_tok: int) -> None:
    fits = len(ids) + max_tok <= LIMIT
    if fits:
        assert fit_prompt(ids, max_tok, LIMIT, policy="error", bos=BOS) == ids
        return
    with pytest.raises(ContextLengthExceeded) as exc:
        fit_prompt(ids, max_tok, LIMIT, policy="error", bos=BOS)
    message = exc.value.message
    # It names the limit and both numbers, never the tokens themselves.
    assert str(LIMIT) in message and str(len(ids) + max_tok) in message
    assert exc.value.code == "context_length_exceeded" and exc.value.param == "prompt"


@given(prompts, st.integers(1, LIMIT - 1), st.integers(1, 3 * LIMIT))
def test_truncate_prompt_tokens_applies_first_under_the_error_policy(
    ids: list[int], max_tok: int, trunc: int
) -> None:
    # The client's own truncation applies before the policy looks: a prompt
    # it brings within the limit is served, cut to truncate_to; only one
    # still too long after it is refused.
    cut = min(len(ids), trunc)
    if cut + max_tok > LIMIT:
        with pytest.raises(ContextLengthExceeded) as exc:
            fit_prompt(ids, max_tok, LIMIT, policy="error", truncate_to=trunc, bos=BOS)
        assert str(cut + max_tok) in exc.value.message
        return
    kept = fit_prompt(ids, max_tok, LIMIT, policy="error", truncate_to=trunc, bos=BOS)
    assert len(kept) == cut
    assert kept == fit_prompt(ids, max_tok, LIMIT, policy="left", truncate_to=trunc, bos=BOS)


@given(st.integers(1, 5 * LIMIT))
def test_max_tokens_must_leave_room_for_a_prompt(max_tok: int) -> None:
    if max_tok < LIMIT:
        check_max_tokens(max_tok, LIMIT)
        return
    with pytest.raises(ContextLengthExceeded) as exc:
        check_max_tokens(max_tok, LIMIT)
    assert exc.value.param == "max_tokens"


def test_the_refusals_say_what_was_asked_and_what_fits() -> None:
    with pytest.raises(ContextLengthExceeded) as exc:
        fit_prompt([BOS, *range(2, 62)], 10, LIMIT, policy="error", bos=BOS)
    assert exc.value.message == (
        "This model's maximum context length is 64 tokens. However, you requested 71 "
        "tokens (61 in the prompt, 10 for the completion). Please reduce the prompt or "
        "the completion length."
    )
    assert exc.value.param == "prompt" and exc.value.code == "context_length_exceeded"
    with pytest.raises(ContextLengthExceeded) as exc:
        check_max_tokens(LIMIT, LIMIT)
    assert exc.value.message == (
        "max_tokens must be less than this model's maximum context length of 64 tokens "
        "(it leaves no room for a prompt); you requested 64."
    )
    assert exc.value.param == "max_tokens"
    check_max_tokens(LIMIT - 1, LIMIT)  # one token of room is room


def test_examples_at_the_edges() -> None:
    ids = [BOS, 10, 11, 12, 13, 14]
    # exactly at the limit: untouched; one over: the oldest after BOS goes
    assert fit_prompt(ids, 58, LIMIT, policy="error", bos=BOS) == ids
    assert fit_prompt(ids, 59, LIMIT, policy="left", bos=BOS) == [BOS, 11, 12, 13, 14]
    # a budget of two keeps BOS and the newest; of one, the newest, not BOS
    assert fit_prompt(ids, 62, LIMIT, policy="left", bos=BOS) == [BOS, 14]
    assert fit_prompt(ids, 63, LIMIT, policy="left", bos=BOS) == [14]
    # BOS kept only when the prompt starts with it; no BOS known: plain newest
    assert fit_prompt([7, *ids], 60, LIMIT, policy="left", bos=BOS) == [11, 12, 13, 14]
    assert fit_prompt(ids, 60, LIMIT, policy="left", bos=None) == [11, 12, 13, 14]
    assert fit_prompt(ids, 60, LIMIT, policy="left", bos=BOS) == [BOS, 12, 13, 14]
    # truncate_prompt_tokens: applied when the prompt is longer, BOS kept there too
    assert fit_prompt(ids, 1, LIMIT, policy="error", truncate_to=3, bos=BOS) == [BOS, 13, 14]
    assert fit_prompt(ids, 1, LIMIT, policy="error", truncate_to=6, bos=BOS) == ids
    assert fit_prompt(ids, 1, LIMIT, policy="error", truncate_to=3, bos=None) == [12, 13, 14]


# -- a conversation fitted by whole messages (fit_messages) ---------------------

roles = st.sampled_from(["system", "user", "assistant"])
conversations = st.lists(st.tuples(roles, st.integers(0, 30)), min_size=1, max_size=8).map(
    lambda ms: [{"role": r, "content": "x" * n} for r, n in ms]
)
completion = st.one_of(st.none(), st.integers(1, LIMIT - 1))


def render(messages: list[Message]) -> list[int]:
    """A template's shape: BOS, then per message a role token and its content."""
    ids = [BOS]
    for m in messages:
        ids += [2 if m["role"] == "system" else 3, *([9] * len(m["content"]))]
    return ids


@given(conversations, completion)
def test_a_conversation_keeps_system_and_last_messages_and_drops_the_fewest_oldest(
    messages: list[Message], requested: int | None
) -> None:
    room = LIMIT - (requested or 1)
    droppable = [i for i, m in enumerate(messages[:-1]) if m["role"] != "system"]
    fits = [
        k
        for k in range(len(droppable) + 1)
        if len(render(_without(messages, droppable, k))) <= room
    ]
    if not fits:
        with pytest.raises(ContextLengthExceeded) as exc:
            fit_messages(messages, render, requested, LIMIT, policy="left")
        assert exc.value.param == "messages" and str(LIMIT) in exc.value.message
        return
    ids, dropped, dropped_tokens = fit_messages(messages, render, requested, LIMIT, policy="left")
    assert dropped == fits[0]  # the fewest, and the oldest first
    assert ids == render(_without(messages, droppable, dropped))
    assert len(ids) <= room  # the context limit holds
    assert dropped_tokens == len(render(messages)) - len(ids)
    if dropped == 0:
        assert ids == render(messages)


@given(conversations, completion)
def test_the_error_policy_refuses_a_conversation_exactly_when_it_does_not_fit(
    messages: list[Message], requested: int | None
) -> None:
    full = render(messages)
    asked = len(full) + (requested or 1)
    if asked <= LIMIT:
        assert fit_messages(messages, render, requested, LIMIT, policy="error") == (full, 0, 0)
        return
    with pytest.raises(ContextLengthExceeded) as exc:
        fit_messages(messages, render, requested, LIMIT, policy="error")
    assert exc.value.param == "messages" and exc.value.code == "context_length_exceeded"
    assert f"requested {asked} tokens ({len(full)} in the {len(messages)} messages" in (
        exc.value.message
    )


def test_conversation_examples_at_the_edges() -> None:
    system = {"role": "system", "content": "s" * 4}  # 5 tokens
    old = {"role": "user", "content": "o" * 20}  # 21
    mid = {"role": "assistant", "content": "m" * 20}  # 21
    last = {"role": "user", "content": "l" * 10}  # 11
    convo = [system, old, mid, last]  # BOS + 58 = 59 tokens
    # exactly at the limit with 5 for the completion: nothing dropped
    assert fit_messages(convo, render, 5, LIMIT, policy="left") == (render(convo), 0, 0)
    # one more: the oldest non-system message goes, whole
    ids, dropped, tokens = fit_messages(convo, render, 6, LIMIT, policy="left")
    assert (ids, dropped, tokens) == (render([system, mid, last]), 1, 21)
    # exactly at the limit after dropping one: one dropped, not two
    assert fit_messages(convo, render, 26, LIMIT, policy="left")[1:] == (1, 21)
    # no max_tokens: one token is kept for the completion
    assert fit_messages(convo, render, None, LIMIT, policy="left")[1] == 0
    # even system + last cannot fit: refused, saying how long they are; and
    # the error policy refuses what does not fit as it is
    for max_tokens, policy, message in (
        (
            48,
            "left",
            "This model's maximum context length is 64 tokens. Even with only the "
            "system messages and the last message, the prompt has 17 tokens and 48 are "
            "requested for the completion. Please shorten them.",
        ),
        (
            6,
            "error",
            "This model's maximum context length is 64 tokens. However, you "
            "requested 65 tokens (59 in the 4 messages, 6 for the completion). Please "
            "shorten the conversation or the completion length.",
        ),
    ):
        with pytest.raises(ContextLengthExceeded) as exc:
            fit_messages(convo, render, max_tokens, LIMIT, policy=policy)  # type: ignore[arg-type]
        assert exc.value.message == message and exc.value.param == "messages"


def _without(messages: list[Message], droppable: list[int], k: int) -> list[Message]:
    gone = set(droppable[:k])
    return [m for i, m in enumerate(messages) if i not in gone]
