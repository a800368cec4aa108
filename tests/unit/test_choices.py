"""The choice accumulator (app/completion/choices.py) on scripted engine outputs, with no
engine: what a stream sends adds up to what the whole answer says, for echo,
logprobs (prompt logprobs with n > 1 included), best_of, finish reasons and
multi-token deltas.

The rules (n, best_of, echo, logprobs, finish reasons) checked one by one follow.
"""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from app.completion.choices import Choices
from app.completion.prepared import PreparedCompletion, PreparedPrompt
from app.engine.protocol import SamplingOptions
from app.observability.metrics import Metrics
from app.observability.timers import RequestTimer
from testkit.fake_engine import CharTokenizer, Lp, Out, ReqOut
from tests.support.metrics import parse, value

TOK = CharTokenizer()


def prepared(
    prompts: list[str] | None = None,
    n: int = 1,
    best_of: int | None = None,
    echo: bool = False,
    logprobs: int | None = None,
) -> PreparedCompletion:
    texts = prompts or ["ab"]
    return PreparedCompletion(
        request_id="cmpl-test",
        created=0,
        arrival=0.0,
        deadline=None,
        model="fake",
        prompts=[PreparedPrompt(TOK.encode(t), t) for t in texts],
        options=SamplingOptions(max_tokens=8, n=best_of or n),
        n=n,
        echo=echo,
        logprobs=logprobs,
        include_usage=True,
    )


def metrics() -> Metrics:
    return Metrics(CollectorRegistry(), "fake")


def position(token: int, logprob: float) -> dict[int, Lp]:
    return {token: Lp(logprob, TOK.decode([token]))}


def run(prep: PreparedCompletion, outputs: list[tuple[int, ReqOut]]) -> tuple[Choices, dict]:  # type: ignore[type-arg]
    """Feed the outputs; the streamed text per choice index, as a client joins it."""
    acc = Choices(prep, TOK, metrics())
    streamed: dict[int, str] = {}
    for i, out in outputs:
        for d in acc.feed(i, out):
            streamed[d.choice.index] = streamed.get(d.choice.index, "") + d.text
    return acc, streamed


def test_multi_token_deltas_stream_what_the_answer_says() -> None:
    outs = [
        (0, ReqOut([Out(0, "He", [10, 11])])),
        (0, ReqOut([Out(0, "", [12])])),  # bytes held back by the detokenizer
        (0, ReqOut([Out(0, "llo", [13, 14, 15], finish_reason="length")])),
    ]
    acc, streamed = run(prepared(), outs)
    final = acc.final()
    assert streamed == {0: "Hello"} and final[0]["text"] == "Hello"
    assert final[0]["finish_reason"] == "length"
    assert acc.usage(2) == {
        "prompt_tokens": 3,
        "completion_tokens": 6,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 2},
    }


def test_a_delta_with_nothing_new_is_not_sent_but_a_bare_finish_is() -> None:
    acc = Choices(prepared(), TOK, metrics())
    assert list(acc.feed(0, ReqOut([Out(0, "", [12])]))) == []
    finish = list(acc.feed(0, ReqOut([Out(0, "", [], finish_reason="stop")])))
    assert [(d.text, d.finish_reason) for d in finish] == [("", "stop")]


def test_echo_goes_out_once_with_the_first_delta() -> None:
    outs = [(0, ReqOut([Out(0, "X", [40])])), (0, ReqOut([Out(0, "Y", [41], "stop")]))]
    acc, streamed = run(prepared(["ab"], echo=True), outs)
    assert streamed == {0: "abXY"}
    assert acc.final()[0]["text"] == "abXY"


def test_prompt_logprobs_reach_every_sample_with_n_above_one() -> None:
    prompt_ids = TOK.encode("ab")
    prompt_lps: list[dict[int, Lp] | None] = [None] + [position(t, -0.5) for t in prompt_ids[1:]]
    outs = [
        # Sample 0 starts in the first output, which carries the prompt logprobs.
        (0, ReqOut([Out(0, "X", [40], logprobs=[position(40, -1.0)])], prompt_logprobs=prompt_lps)),
        # Sample 1 starts later, where vLLM sends an empty prompt_logprobs list.
        (0, ReqOut([Out(1, "Y", [41], logprobs=[position(41, -2.0)])], prompt_logprobs=[])),
        (0, ReqOut([Out(0, "", [], "stop"), Out(1, "", [], "stop")], prompt_logprobs=[])),
    ]
    prep = prepared(["ab"], n=2, echo=True, logprobs=1)
    acc = Choices(prep, TOK, metrics())
    streamed: dict[int, list[float | None]] = {}
    for i, out in outs:
        for d in acc.feed(i, out):
            lp_sent = d.choice.logprobs_from(d.logprobs_start)
            assert lp_sent is not None
            streamed.setdefault(d.choice.index, []).extend(lp_sent["token_logprobs"])
    # The stream's first delta of each sample carries the prompt's logprobs too.
    assert streamed == {0: [None, -0.5, -0.5, -1.0], 1: [None, -0.5, -0.5, -2.0]}
    final = acc.final()
    assert len(final) == 2
    for choice, sampled in zip(final, (-1.0, -2.0), strict=True):
        lp = choice["logprobs"]
        assert lp is not None
        assert lp["token_logprobs"] == [None, -0.5, -0.5, sampled]
        assert lp["tokens"][:3] == ["<s>", "a", "b"]  # BOS named, as LLaMA's tokenizer does
        assert lp["text_offset"] == [0, 3, 4, 5]


def test_streamed_logprobs_are_the_new_entries_only() -> None:
    acc = Choices(prepared(logprobs=0), TOK, metrics())

    def sent(out: ReqOut) -> list[list[float | None]]:
        # Sliced as the stream does, as each delta comes.
        lps = [d.choice.logprobs_from(d.logprobs_start) for d in acc.feed(0, out)]
        return [lp["token_logprobs"] for lp in lps if lp is not None]

    two = [position(68, -1), position(69, -2)]
    assert sent(ReqOut([Out(0, "AB", [68, 69], logprobs=two)])) == [[-1, -2]]
    assert sent(ReqOut([Out(0, "C", [70], "length", logprobs=[position(70, -3)])])) == [[-3]]
    lp = acc.final()[0]["logprobs"]
    assert lp is not None and lp["text_offset"] == [0, 1, 2]


def test_best_of_keeps_the_most_likely_and_numbers_them_from_zero() -> None:
    outs = [
        (0, ReqOut([Out(k, t, [50 + k], "stop", cumulative_logprob=c)]))
        for k, t, c in ((0, "low", -5.0), (1, "high", -0.5), (2, "mid", -1.0))
    ]
    acc, _ = run(prepared(n=2, best_of=3), outs)
    final = acc.final()
    assert [(c["index"], c["text"]) for c in final] == [(0, "high"), (1, "mid")]
    assert acc.usage(0)["completion_tokens"] == 3  # every candidate's tokens are counted


def test_several_prompts_are_numbered_prompt_by_prompt() -> None:
    outs = [
        (1, ReqOut([Out(0, "b0", [60], "stop"), Out(1, "b1", [61], "stop")])),
        (0, ReqOut([Out(1, "a1", [62], "stop"), Out(0, "a0", [63], "stop")])),
    ]
    acc, streamed = run(prepared(["x", "y"], n=2), outs)
    assert [(c["index"], c["text"]) for c in acc.final()] == [
        (0, "a0"),
        (1, "a1"),
        (2, "b0"),
        (3, "b1"),
    ]
    assert streamed == {0: "a0", 1: "a1", 2: "b0", 3: "b1"}


def test_finish_reasons_and_tokens_are_counted_once() -> None:
    m = metrics()
    acc = Choices(prepared(n=2), TOK, m)
    for _ in acc.feed(0, ReqOut([Out(0, "a", [5], "stop"), Out(1, "bb", [6, 7], "length")])):
        pass
    samples = parse(_text(m))
    assert value(samples, "gateway_generation_tokens_total", model="fake") == 3
    assert value(samples, "gateway_request_finished_total", model="fake", finish_reason="stop") == 1
    assert (
        value(samples, "gateway_request_finished_total", model="fake", finish_reason="length") == 1
    )


def test_inter_token_latency_of_a_multi_token_first_output_is_not_corrupted() -> None:
    # vLLM merges deltas when the consumer lags: the first output may carry
    # several tokens. They arrived together: no gap may be measured from 0.
    m = metrics()
    timer = RequestTimer(arrival=0.0)
    timer.tokens_out(m, 3)
    samples = parse(_text(m))
    assert value(samples, "gateway_inter_token_latency_seconds_count", model="fake") == 2
    assert value(samples, "gateway_inter_token_latency_seconds_sum", model="fake") < 0.001
    assert (
        value(samples, "gateway_inter_token_latency_seconds_bucket", model="fake", le="+Inf") == 2
    )
    assert (
        value(samples, "gateway_inter_token_latency_seconds_bucket", model="fake", le="0.001") == 2
    )


def _text(m: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.registry).decode()


def test_coalescing_merges_deltas_after_the_first_and_keeps_the_text() -> None:
    from app.completion.stream import coalesced

    acc = Choices(prepared(logprobs=0), TOK, metrics())
    feed = coalesced(acc.feed, 3)
    outs = [
        ReqOut([Out(0, c, [70 + i], logprobs=[position(70 + i, -1.0)])])
        for i, c in enumerate("abcdefg")
    ]
    outs.append(ReqOut([Out(0, "h", [90], "length", logprobs=[position(90, -1.0)])]))
    sent = []
    for out in outs:
        for d in feed(0, out):
            lp = d.choice.logprobs_from(d.logprobs_start)
            assert lp is not None
            sent.append((d.text, d.tokens, len(lp["tokens"]), d.finish_reason))
    # The first alone, then 3 tokens per event, the finish flushes the rest.
    assert sent == [
        ("a", 1, 1, None),
        ("bcd", 3, 3, None),
        ("efg", 3, 3, None),
        ("h", 1, 1, "length"),
    ]
    assert "".join(t for t, *_ in sent) == acc.final()[0]["text"]


# -- the rules, one by one ----------------------------------------------------


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
