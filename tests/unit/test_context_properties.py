"""Properties of the context-limit rules (app/completion/context_limit.py), checked by hypothesis
over prompts, limits, max_tokens, truncate_prompt_tokens and BOS."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.completion.context_limit import check_max_tokens, fit_prompt
from app.errors import ContextLengthExceeded

BOS = 1
LIMIT = 2048

token_ids = st.lists(st.integers(0, 31_999), min_size=1, max_size=3000)
with_bos = token_ids.map(lambda ids: [BOS, *ids])
prompts = st.one_of(token_ids, with_bos)
max_tokens = st.integers(1, LIMIT - 1)
truncate_to = st.one_of(st.none(), st.integers(1, 3000))


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


@given(prompts, st.integers(1, LIMIT - 1), st.integers(1, 3000))
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


@given(st.integers(1, 10_000))
def test_max_tokens_must_leave_room_for_a_prompt(max_tok: int) -> None:
    if max_tok < LIMIT:
        check_max_tokens(max_tok, LIMIT)
        return
    with pytest.raises(ContextLengthExceeded) as exc:
        check_max_tokens(max_tok, LIMIT)
    assert exc.value.param == "max_tokens"
