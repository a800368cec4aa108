"""/v1/completions on the real engine, with the official openai SDK as the client."""

from __future__ import annotations

import json
from collections import defaultdict

import httpx
import openai
import pytest

from tests.support.gateway import MODEL_NAME
from tests.support.sse import data_events

PROMPT = "The capital of France is"
PROMPT_IDS = [1, 450, 7483, 310, 3444, 338]


def greedy(client: openai.OpenAI, prompt: str | list[int] = PROMPT, **kw: object) -> str:
    kw.setdefault("max_tokens", 16)
    out = client.completions.create(model=MODEL_NAME, prompt=prompt, temperature=0, **kw)  # type: ignore[call-overload]
    return out.choices[0].text


def test_non_stream_shape_and_usage_match_tokenizer(client: openai.OpenAI, tokenizer) -> None:  # type: ignore[no-untyped-def]
    out = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPT,
        max_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert out.id.startswith("cmpl-")
    assert out.object == "text_completion"
    assert out.model == MODEL_NAME
    assert out.created > 0
    (choice,) = out.choices
    assert choice.index == 0
    assert choice.finish_reason == "length"
    assert out.usage is not None
    assert out.usage.prompt_tokens == len(tokenizer(PROMPT).input_ids) == 6
    assert out.usage.completion_tokens == 8
    assert out.usage.total_tokens == 14
    assert choice.text


def test_stream_equals_non_stream_for_greedy(client: openai.OpenAI) -> None:
    expected = greedy(client)
    chunks = list(
        client.completions.create(
            model=MODEL_NAME, prompt=PROMPT, max_tokens=16, temperature=0, stream=True
        )
    )
    assert len(chunks) > 1  # it really streamed
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_greedy_is_deterministic_across_runs(client: openai.OpenAI) -> None:
    assert greedy(client, max_tokens=32) == greedy(client, max_tokens=32)


def test_token_id_prompt_equals_text_prompt(client: openai.OpenAI) -> None:
    assert greedy(client, PROMPT_IDS) == greedy(client, PROMPT)


def test_include_usage_sends_a_final_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model=MODEL_NAME,
            prompt=PROMPT,
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        6,
        5,
        11,
    )
    assert all(c.usage is None for c in chunks[:-1])


def test_no_usage_chunk_without_include_usage(http: httpx.Client) -> None:
    with http.stream(
        "POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "stream": True}
    ) as r:
        events = data_events(r)
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["choices"] for e in events[:-1])
    assert all("usage" not in json.loads(e) for e in events[:-1])


def test_every_stream_ends_with_done(http: httpx.Client) -> None:
    for body in (
        {"prompt": PROMPT, "max_tokens": 4, "stream": True},
        {"prompt": [PROMPT, "Hi"], "max_tokens": 2, "stream": True, "n": 2, "temperature": 0.7},
        {
            "prompt": PROMPT,
            "max_tokens": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ):
        with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = data_events(r)
        assert events[-1] == "[DONE]"
        assert events.count("[DONE]") == 1


def test_n_and_several_prompts_index_choices_like_openai(client: openai.OpenAI) -> None:
    prompts = [PROMPT, "Hello, how are you?"]
    out = client.completions.create(
        model=MODEL_NAME,
        prompt=prompts,
        n=2,
        max_tokens=4,
        temperature=0.9,
        seed=7,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason == "length" for c in out.choices)
    assert out.usage is not None and out.usage.completion_tokens == 16
    assert out.usage.prompt_tokens == 6 + 7  # each prompt counted once

    texts: dict[int, str] = defaultdict(str)
    finish: dict[int, str | None] = {}
    for chunk in client.completions.create(
        model=MODEL_NAME,
        prompt=prompts,
        n=2,
        max_tokens=4,
        temperature=0.9,
        seed=7,
        stream=True,
        extra_body={"ignore_eos": True},
    ):
        (choice,) = chunk.choices
        texts[choice.index] += choice.text
        if choice.finish_reason:
            finish[choice.index] = choice.finish_reason
    assert sorted(texts) == [0, 1, 2, 3]
    assert finish == {0: "length", 1: "length", 2: "length", 3: "length"}
    assert all(texts.values())


def test_stop_string_cuts_the_text(client: openai.OpenAI) -> None:
    full = greedy(client, max_tokens=24)
    # A stop string taken from the middle of the greedy text, at its first occurrence.
    stop = full[8:11]
    cut = full.index(stop)
    assert cut > 0
    out = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop]
    )
    assert out.choices[0].text == full[:cut]
    assert out.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=0, stop=stop, stream=True
        )
    )
    assert streamed == full[:cut]


def test_logprobs_have_openai_shape(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPT,
        max_tokens=5,
        temperature=0,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    lp = out.choices[0].logprobs
    assert lp is not None
    assert (
        len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    )
    assert all(isinstance(x, float) and x <= 0 for x in lp.token_logprobs)
    for top, tok, logprob in zip(lp.top_logprobs, lp.tokens, lp.token_logprobs, strict=True):
        assert 1 <= len(top) <= 3  # the top 2 plus the sampled token
        # Greedy: the sampled token is the most likely one.
        assert top[tok] == logprob == max(top.values())
    assert lp.text_offset[0] == 0
    assert all(
        b - a == len(t)
        for a, b, t in zip(lp.text_offset, lp.text_offset[1:], lp.tokens, strict=False)
    )


def test_streamed_logprobs_match_non_stream(client: openai.OpenAI) -> None:
    full = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPT,
        max_tokens=5,
        temperature=0,
        logprobs=1,
        extra_body={"ignore_eos": True},
    )
    tokens: list[str] = []
    offsets: list[int] = []
    for chunk in client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPT,
        max_tokens=5,
        temperature=0,
        logprobs=1,
        stream=True,
        extra_body={"ignore_eos": True},
    ):
        lp = chunk.choices[0].logprobs
        assert lp is not None
        tokens += lp.tokens
        offsets += lp.text_offset
    assert full.choices[0].logprobs is not None
    assert tokens == full.choices[0].logprobs.tokens
    assert offsets == full.choices[0].logprobs.text_offset


def test_echo_prepends_prompt_with_prompt_logprobs(client: openai.OpenAI) -> None:
    plain = greedy(client, max_tokens=3)
    out = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPT,
        max_tokens=3,
        temperature=0,
        echo=True,
        logprobs=1,
        extra_body={"ignore_eos": True},
    )
    choice = out.choices[0]
    assert choice.text == PROMPT + plain
    lp = choice.logprobs
    assert lp is not None
    assert len(lp.tokens) == len(PROMPT_IDS) + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts BOS
    assert all(x is not None for x in lp.token_logprobs[1:])
    # Streaming echoes the prompt once, in the first chunk.
    chunks = list(
        client.completions.create(
            model=MODEL_NAME, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, stream=True
        )
    )
    assert chunks[0].choices[0].text.startswith(PROMPT)
    assert "".join(c.choices[0].text for c in chunks) == PROMPT + plain


@pytest.mark.parametrize("stream", [False, True])
def test_echo_logprobs_reach_every_sampled_choice(client: openai.OpenAI, stream: bool) -> None:
    # With n > 1 each sample's first tokens may arrive in a later engine
    # output than the prompt's logprobs (about half the time here): every
    # choice must still carry them. Several rounds make that order happen.
    for _ in range(8):
        out = client.completions.create(
            model=MODEL_NAME,
            prompt=["a", "b"],
            n=2,
            max_tokens=2,
            temperature=1,
            echo=True,
            logprobs=1,
            stream=stream,
        )
        choices = [c for chunk in out for c in chunk.choices] if stream else out.choices  # type: ignore[union-attr]
        firsts = {}
        for c in choices:
            if c.index not in firsts:
                firsts[c.index] = c.logprobs
        assert sorted(firsts) == [0, 1, 2, 3]
        for lp in firsts.values():
            assert lp is not None and lp.tokens[:2] in (["<s>", "a"], ["<s>", "b"])
            first, second = lp.token_logprobs[:2]
            assert first is None and second is not None and second <= 0


def test_best_of_returns_the_most_likely_candidates(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPT,
        max_tokens=4,
        best_of=3,
        n=1,
        temperature=1.0,
        seed=3,
        extra_body={"ignore_eos": True},
    )
    assert len(out.choices) == 1 and out.choices[0].index == 0
    assert out.choices[0].logprobs is None  # not asked for
    assert out.usage is not None and out.usage.completion_tokens == 12  # all candidates billed


def test_sampling_parameters_are_applied(client: openai.OpenAI) -> None:
    base = greedy(client, max_tokens=8)
    # A huge bias on one token forces it at every step.
    forced = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=4, temperature=0, logit_bias={"450": 100}
    )
    assert forced.choices[0].text.replace(" ", "") == "The" * 4
    # Same seed, same sample; the sample differs from greedy.
    a = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=11
    )
    b = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=11
    )
    assert a.choices[0].text == b.choices[0].text != base


def test_stop_token_ids_and_min_tokens(client: openai.OpenAI) -> None:
    # The bias forces token 450 ("The"); as a stop token it ends the completion at once,
    forced = {"450": 100}
    out = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPT,
        max_tokens=8,
        temperature=0,
        logit_bias=forced,
        extra_body={"stop_token_ids": [450]},
    )
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.completion_tokens == 1
    # unless min_tokens holds stop tokens back for the first 3 tokens.
    out = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPT,
        max_tokens=8,
        temperature=0,
        logit_bias=forced,
        extra_body={"stop_token_ids": [450], "min_tokens": 3},
    )
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.completion_tokens == 4


@pytest.mark.parametrize("stream", [False, True])
def test_wrong_model_is_404(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1, stream=stream)
    assert err.value.code == "model_not_found"
    assert MODEL_NAME in err.value.message


@pytest.mark.parametrize("interval", [1, 4])
def test_streamed_text_and_token_ids_equal_the_whole_answer(
    http: httpx.Client, interval: int
) -> None:
    body = {
        "prompt": "Once upon a time",
        "max_tokens": 40,
        "temperature": 0.9,
        "seed": 11,
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
        "ignore_eos": True,
        "stream_interval": interval,
    }
    whole = http.post("/v1/completions", json=body).json()["choices"][0]
    r = http.post("/v1/completions", json={**body, "stream": True})
    chunks = [json.loads(d) for d in data_events(r)[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    ids = [t for c in chunks for t in c["choices"][0]["logprobs"]["tokens"]]
    assert text == whole["text"]
    assert ids == whole["logprobs"]["tokens"] and len(ids) == 40
    if interval == 1:
        assert len(chunks) >= 30  # about one event per token
    else:
        # The first token alone, then at most ~4 per event (merged outputs may bring more).
        assert len(chunks[0]["choices"][0]["logprobs"]["tokens"]) == 1
        assert len(chunks) <= 1 + 39 // 4 + 2
