"""The choice accumulator's rules one by one (app/completion/choices.py):
scoring leaves the engine's one step out, logprobs only when new, the
order of n samples without best_of, the ends and times of a request, token
names from the engine or the tokenizer (special tokens named), prompts
given as ids echoed as text. Found necessary by mutation testing
(tests/MUTATION.md)."""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace
from typing import Any

import pytest

from app.completion.choices import Choices
from testkit.fake_engine import Lp, Out, ReqOut
from tests.unit.test_choices import TOK, metrics, position, prepared


def test_scoring_leaves_the_engine_step_out_of_text_usage_and_logprobs() -> None:
    prep = dataclasses.replace(prepared(["ab"], echo=True, logprobs=1), echo_only=True)
    prompt_lps = [None, position(TOK.encode("a")[1], -0.5), position(TOK.encode("b")[1], -0.25)]
    acc = Choices(prep, TOK, metrics())
    out = Out(0, "z", [200], "length", logprobs=[position(200, -9.0)])
    [delta] = acc.feed(0, ReqOut([out], prompt_logprobs=prompt_lps))
    assert delta.text == "ab" and delta.tokens == 0  # the echo, not the step's "z"
    [choice] = acc.final()
    assert choice["text"] == "ab"
    assert choice["logprobs"] is not None
    assert choice["logprobs"]["token_logprobs"] == [None, -0.5, -0.25]
    assert acc.usage(0)["completion_tokens"] == 0


def test_a_delta_goes_out_for_new_logprobs_alone_and_not_for_nothing() -> None:
    acc = Choices(prepared(["ab"], logprobs=1), TOK, metrics())
    assert len(acc.feed(0, ReqOut([Out(0, "x", [50], logprobs=[position(50, -1.0)])]))) == 1
    # the detokenizer held the text back, the token's logprob is new: sent
    [held] = acc.feed(0, ReqOut([Out(0, "", [51], logprobs=[position(51, -2.0)])]))
    assert held.text == "" and held.logprobs_start == 1
    sent = held.choice.logprobs_from(held.logprobs_start)
    assert sent is not None
    assert sent == {
        "tokens": [TOK.decode([51])],
        "token_logprobs": [-2.0],
        "top_logprobs": [{TOK.decode([51]): -2.0}],
        "text_offset": [1],
    }
    # no text, no token, no finish: nothing to send
    assert acc.feed(0, ReqOut([Out(0, "", [], logprobs=[])])) == []


def test_n_samples_keep_their_order_without_best_of() -> None:
    acc = Choices(prepared(["ab"], n=2), TOK, metrics())
    acc.feed(
        0,
        ReqOut(
            [Out(0, "first", [5], "stop", cumulative_logprob=-5.0),
             Out(1, "second", [6], "stop", cumulative_logprob=-1.0)],
            finished=True,
        ),
    )  # fmt: skip
    assert [c["text"] for c in acc.final()] == ["first", "second"]


def test_finish_reasons_and_texts_in_choice_order() -> None:
    acc = Choices(prepared(["ab", "cd"], n=2), TOK, metrics())
    assert acc.finish_reasons() == [] and acc.texts() == []
    acc.feed(1, ReqOut([Out(1, "d", [6]), Out(0, "c", [5], "stop")]))
    acc.feed(0, ReqOut([Out(0, "a", [7], "length")]))
    assert acc.finish_reasons() == ["length", "stop", None]
    assert acc.texts() == ["a", "c", "d"]


def test_ttft_and_the_last_token_time(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [10.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    prep = dataclasses.replace(prepared(["ab", "cd"]), arrival=4.0)
    acc = Choices(prep, TOK, metrics())
    assert acc.ttft() is None and acc.last_token_at() is None  # nothing out yet
    acc.feed(0, ReqOut([Out(0, "", [], None)]))
    assert acc.ttft() is None  # an output without tokens is not a first token
    now[0] = 12.0
    acc.feed(1, ReqOut([Out(0, "c", [5])]))
    now[0] = 13.5
    acc.feed(0, ReqOut([Out(0, "a", [6])]))
    now[0] = 20.0
    acc.feed(1, ReqOut([Out(0, "d", [7], "stop")]))
    assert acc.ttft() == 12.0 - 4.0  # the earliest first token of any choice
    assert acc.last_token_at() == 20.0


def test_token_names_come_from_the_engine_else_the_tokenizer_with_specials() -> None:
    acc = Choices(prepared(["ab"], echo=True, logprobs=1), TOK, metrics())
    prompt_lps = [None, {TOK.encode("a")[1]: Lp(-0.5, None)}, None]
    out = Out(0, "x", [60, 2], "stop", logprobs=[{60: Lp(-1.0, "engine-name")}])
    acc.feed(0, ReqOut([out], prompt_logprobs=prompt_lps))
    [choice] = acc.final()
    lp = choice["logprobs"]
    assert lp is not None
    # BOS named by the tokenizer (special tokens kept), "a" decoded (the engine
    # gave no text), the sampled token as the engine named it, and the EOS
    # token past the positions the engine sent: named, without a logprob.
    assert lp["tokens"] == ["<s>", "a", "b", "engine-name", "</s>"]
    assert lp["token_logprobs"] == [None, -0.5, None, -1.0, None]
    assert lp["top_logprobs"] == [None, {"a": -0.5}, None, {"engine-name": -1.0}, None]


def test_a_prompt_given_as_ids_is_echoed_as_text_without_special_tokens() -> None:
    prep = prepared(["ab"], echo=True)
    prep.prompts[0].text = None  # sent as token ids
    acc = Choices(prep, TOK, metrics())
    acc.feed(0, ReqOut([Out(0, "!", [36], "stop")], finished=True))
    assert acc.final()[0]["text"] == "ab!"  # BOS not written out


def test_a_traced_request_puts_its_trace_on_the_latency_observations() -> None:
    exemplar = {"trace_id": "0af7651916cd43dd8448eb211c80319c"}
    record: Any = SimpleNamespace(exemplar=exemplar)  # what the timer reads of a record
    prep = dataclasses.replace(prepared(["ab"]), record=record)
    m = metrics()
    acc = Choices(prep, TOK, m)
    acc.feed(0, ReqOut([Out(0, "a", [5], "stop")], finished=True))
    ttft = [
        s
        for family in m.registry.collect()
        if family.name == "gateway_time_to_first_token_seconds"
        for s in family.samples
        if s.exemplar is not None
    ]
    assert [s.exemplar.labels for s in ttft] == [exemplar]


def test_echo_uses_the_clients_own_prompt_text() -> None:
    prep = prepared(["ab"], echo=True)
    prep.prompts[0].text = "a b"  # what the client sent, however the tokenizer reads it back
    acc = Choices(prep, TOK, metrics())
    acc.feed(0, ReqOut([Out(0, "!", [36], "stop")], finished=True))
    assert acc.final()[0]["text"] == "a b!"


def test_best_of_without_cumulative_logprobs_keeps_the_first_samples() -> None:
    def final(first: float | None) -> list[str]:
        acc = Choices(prepared(["ab"], n=1, best_of=2), TOK, metrics())
        outs = [Out(0, "x", [5], "stop", cumulative_logprob=first), Out(1, "y", [6], "stop")]
        acc.feed(0, ReqOut(outs, finished=True))
        return [c["text"] for c in acc.final()]

    assert final(None) == ["x"]  # no logprob from the engine at all: ties, in order
    assert final(0.0) == ["x"]  # a certain sample ties with one the engine gave none for
