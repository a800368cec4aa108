"""Properties of the context-limit rules (app/completion/context_limit.py), checked by hypothesis
over prompts, limits, max_tokens, truncate_prompt_tokens and BOS.

The limit here is small (64, not the model's 2048): hypothesis draws short
lists far more often than long ones, and with a 2048 limit a prompt that
needs truncating was drawn so rarely that reversing the truncation rule
still passed (mutation testing showed it). The rules do not depend on the
limit's size."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.completion.context_limit import check_max_tokens, fit_prompt
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
    # a budget of one token keeps the newest, not BOS
    assert fit_prompt(ids, 63, LIMIT, policy="left", bos=BOS) == [14]
    # BOS kept only when the prompt starts with it; no BOS known: plain newest
    assert fit_prompt([7, *ids], 60, LIMIT, policy="left", bos=BOS) == [11, 12, 13, 14]
    assert fit_prompt(ids, 60, LIMIT, policy="left", bos=None) == [11, 12, 13, 14]
    assert fit_prompt(ids, 60, LIMIT, policy="left", bos=BOS) == [BOS, 12, 13, 14]
    # truncate_prompt_tokens: applied when the prompt is longer, BOS kept there too
    assert fit_prompt(ids, 1, LIMIT, policy="error", truncate_to=3, bos=BOS) == [BOS, 13, 14]
    assert fit_prompt(ids, 1, LIMIT, policy="error", truncate_to=6, bos=BOS) == ids
    assert fit_prompt(ids, 1, LIMIT, policy="error", truncate_to=3, bos=None) == [12, 13, 14]
