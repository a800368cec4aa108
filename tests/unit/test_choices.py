"""The choice accumulator (app/completion/choices.py) on scripted engine outputs, with no
engine: what a stream sends adds up to what the whole answer says, for echo,
logprobs (prompt logprobs with n > 1 included), best_of, finish reasons and
multi-token deltas."""

from __future__ import annotations

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
