"""/v1/chat/completions on the real engine through the official openai SDK:
the template, streaming shape, truncation by whole messages, refusals by
name, cached-token accounting and per-key cache isolation."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.support.gateway import API_KEY, MODEL_NAME, Gateway
from tests.support.metrics import metric
from tests.support.sse import data_events, data_of
from tests.support.wait import until

SYSTEM = {"role": "system", "content": "You are terse."}


def test_chat_answers_in_openai_shape(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_NAME,
        messages=[SYSTEM, {"role": "user", "content": "Hi"}],  # type: ignore[list-item]
        max_tokens=6,
        temperature=1,
        seed=3,
        n=2,
        logprobs=True,
        top_logprobs=2,
        extra_body={"ignore_eos": True},
    )
    out = raw.parse()
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert [c.index for c in out.choices] == [0, 1]
    for c in out.choices:
        assert c.message.role == "assistant" and c.message.content
        assert c.finish_reason == "length"
        assert c.logprobs is not None and c.logprobs.content is not None
        assert len(c.logprobs.content) == 6
        assert all(len(t.top_logprobs) == 2 for t in c.logprobs.content)
    assert out.usage is not None and out.usage.completion_tokens == 12
    assert out.usage.prompt_tokens_details is not None
    cached = out.usage.prompt_tokens_details.cached_tokens
    assert isinstance(cached, int) and 0 <= cached < out.usage.prompt_tokens
    assert raw.headers["x-truncated-prompt-tokens"] == "0"
    assert raw.headers["x-truncated-messages"] == "0"


def test_the_template_renders_the_mobilellama_format(http: httpx.Client, tokenizer) -> None:  # type: ignore[no-untyped-def]
    body = {
        "messages": [SYSTEM, {"role": "user", "content": "Hi"}],
        "max_tokens": 1,
    }
    usage = http.post("/v1/chat/completions", json=body).json()["usage"]
    expected = tokenizer.encode("<s>You are terse. USER: Hi ASSISTANT:", add_special_tokens=False)
    assert usage["prompt_tokens"] == len(expected)


def test_streamed_chat_matches_the_whole_answer(client: openai.OpenAI) -> None:
    kw = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Tell me"}]}],
        "max_tokens": 12,
        "seed": 7,
        "temperature": 0.8,
    }
    whole = client.chat.completions.create(**kw)  # type: ignore[call-overload]
    chunks = list(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})  # type: ignore[call-overload]
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == [whole.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens
    assert isinstance(cached, int) and 0 <= cached < usage.prompt_tokens


def test_oldest_messages_are_dropped_whole_to_fit(client: openai.OpenAI) -> None:
    long = "word " * 700  # ~700 tokens each
    history = []
    for i in range(4):
        history += [
            {"role": "user", "content": f"{i} {long}"},
            {"role": "assistant", "content": f"ok {i}"},
        ]
    messages: list[Any] = [SYSTEM, *history, {"role": "user", "content": "last question"}]
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_NAME,
        messages=messages,
        max_tokens=100,
    )
    out = raw.parse()
    dropped = int(raw.headers["x-truncated-messages"])
    # Four ~700-token user messages cannot all fit in 2048 - 100: the two
    # oldest go, with the assistant reply between them, and nothing more.
    assert dropped == 3
    assert int(raw.headers["x-truncated-prompt-tokens"]) > 1400
    assert out.usage is not None and out.usage.prompt_tokens + 100 <= 2048
    assert out.usage.prompt_tokens > 1400


def test_refusals_name_what_is_unsupported(http: httpx.Client) -> None:
    user = {"role": "user", "content": "Hi"}
    cases = [
        ({"messages": [user], "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                    }
                ]
            },
            "image_url",
        ),
        ({"messages": [user], "top_logprobs": 2}, "logprobs"),
        ({"messages": [user], "max_tokens": 4096}, "max_tokens"),
    ]
    for body, name in cases:
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and name in error["message"], error
    # Still serving.
    assert http.post("/v1/chat/completions", json={"messages": [user], "max_tokens": 1}).is_success


def test_no_template_is_a_400_that_names_the_setting(strict: httpx.Client) -> None:
    r = strict.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "chat_template_missing" and "GATEWAY_CHAT_TEMPLATE" in error["message"]


def test_a_client_leaving_a_chat_stream_aborts_it(gateway: Gateway, http: httpx.Client) -> None:
    before = metric(http, "gateway_client_aborts_total")
    body = {
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if '"content"' in (data_of(line) or ""):
                break
    until(
        lambda: metric(http, "gateway_client_aborts_total") != before,
        "the abort counted", every=0.1,
    )  # fmt: skip
    assert metric(http, "gateway_client_aborts_total") == before + 1


LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 60  # ~600 tokens


def cached(gw: Gateway, key: str, prompt: str) -> int:
    r = httpx.post(
        f"{gw.url}/v1/completions",
        json={"prompt": prompt, "max_tokens": 1},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])


def test_prefix_cache_is_isolated_per_api_key(secured: Gateway) -> None:
    prompt = f"isolation {LONG_PROMPT}"
    assert cached(secured, API_KEY, prompt) == 0  # first time: nothing cached
    assert cached(secured, "sk-other-key", prompt) == 0  # another key: its own cache
    assert cached(secured, API_KEY, prompt) > 0  # the same key again: a hit
    # A client-chosen salt cannot reach another key's cache either.
    r = httpx.post(
        f"{secured.url}/v1/completions",
        json={"prompt": prompt, "max_tokens": 1, "cache_salt": "shared"},
        headers={"Authorization": "Bearer sk-other-key"},
        timeout=60,
    )
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_without_keys_the_cache_is_shared_and_counted(http: httpx.Client) -> None:
    prompt = f"shared {LONG_PROMPT}"
    before = metric(http, "gateway_prompt_cached_tokens_total")
    first = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1}).json()
    again = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1}).json()
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    hit = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert 0 < hit < again["usage"]["prompt_tokens"]
    assert metric(http, "gateway_prompt_cached_tokens_total") - before == hit


@pytest.mark.parametrize("stream", [False, True])
def test_completions_usage_always_has_cached_tokens(http: httpx.Client, stream: bool) -> None:
    body = {"prompt": "Hi", "max_tokens": 2, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
        data = data_events(http.post("/v1/completions", json=body))
        usage = json.loads(data[-2])["usage"]
    else:
        usage = http.post("/v1/completions", json=body).json()["usage"]
    # "Hi" is shorter than a cache block: never a hit, and always reported
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


def test_system_messages_are_never_dropped_to_fit(client: openai.OpenAI) -> None:
    # Dropping the system message would make these fit; it is kept: the old
    # user message goes in the first, and the second cannot fit at all.
    system: Any = {"role": "system", "content": "rule " * 1700}
    old: Any = {"role": "user", "content": "old " * 300}
    last: Any = {"role": "user", "content": "last question"}
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=[system, old, last], max_tokens=100
    )
    assert raw.headers["x-truncated-messages"] == "1"  # the old one, not the system
    out = raw.parse()
    assert out.usage is not None and 1700 < out.usage.prompt_tokens <= 2048 - 100
    bigger: Any = {"role": "system", "content": "rule " * 2000}
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=MODEL_NAME, messages=[bigger, old, last], max_tokens=100
        )
    error = exc.value.body
    assert isinstance(error, dict)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "Even with only the system messages and the last message" in error["message"]


def _cached_tokens(http: httpx.Client, endpoint: str, text: str, salt: str | None) -> int:
    body: dict[str, Any] = {"max_tokens": 1}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    if salt is not None:
        body["cache_salt"] = salt
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    r = http.post(path, json=body)
    assert r.status_code == 200, r.text
    return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_a_client_salt_partitions_the_shared_cache(http: httpx.Client, endpoint: str) -> None:
    # Without API keys: the same prompt hits the cache only under the same salt.
    text = f"salt {endpoint} {time.time_ns()} {LONG_PROMPT}"
    assert _cached_tokens(http, endpoint, text, "s1") == 0
    assert _cached_tokens(http, endpoint, text, "s1") > 0  # same salt: a hit
    assert _cached_tokens(http, endpoint, text, "s2") == 0  # another salt: its own
    assert _cached_tokens(http, endpoint, text, None) == 0  # no salt: the shared one
    assert _cached_tokens(http, endpoint, text, None) > 0


def test_a_client_salt_partitions_only_within_its_key(secured: Gateway) -> None:
    text = f"keyed salt {time.time_ns()} {LONG_PROMPT}"

    def hit(key: str, salt: str | None) -> int:
        with httpx.Client(
            base_url=secured.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as c:
            return _cached_tokens(c, "completions", text, salt)

    assert hit(API_KEY, "s1") == 0
    assert hit(API_KEY, "s1") > 0
    assert hit(API_KEY, None) == 0  # the key's own unsalted partition
    assert hit("sk-other-key", "s1") == 0  # the same salt under another key: no hit
    assert hit("sk-other-key", "s1") > 0
