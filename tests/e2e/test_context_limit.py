"""The 2048-token context limit at its edge, in both truncation modes."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.gateway import MODEL_NAME

LIMIT = 2048
HEADER = "x-truncated-prompt-tokens"
WORD = 450  # "The"


def ids(n: int) -> list[int]:
    """A token-id prompt of exactly n tokens, BOS first."""
    return [1] + [WORD + (i % 7) for i in range(n - 1)]


def complete(http: httpx.Client, **body: object) -> httpx.Response:
    body.setdefault("temperature", 0)
    return http.post("/v1/completions", json=body)


def test_prompt_that_exactly_fits_is_untouched(http: httpx.Client) -> None:
    r = complete(http, prompt=ids(LIMIT - 4), max_tokens=4)
    assert r.status_code == 200
    assert r.headers[HEADER] == "0"
    assert r.json()["usage"]["prompt_tokens"] == LIMIT - 4


def test_one_token_over_is_truncated_by_one(http: httpx.Client) -> None:
    r = complete(http, prompt=ids(LIMIT - 3), max_tokens=4)
    assert r.status_code == 200
    assert r.headers[HEADER] == "1"
    assert r.json()["usage"]["prompt_tokens"] == LIMIT - 4


def test_left_truncation_keeps_bos_and_the_newest_tokens(http: httpx.Client, tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompt = ids(LIMIT + 100)
    r = complete(http, prompt=prompt, max_tokens=1, echo=True, logprobs=0)
    assert r.status_code == 200
    assert r.headers[HEADER] == str(len(prompt) - (LIMIT - 1))
    kept = [1, *prompt[-(LIMIT - 2) :]]
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["tokens"][0] == "<s>"
    assert len(lp["tokens"]) == len(kept) + 1
    assert r.json()["choices"][0]["text"].startswith(
        tokenizer.decode(kept, skip_special_tokens=True)
    )


def test_text_prompt_truncation_is_reported_in_header_and_usage(
    client: openai.OpenAI,
    tokenizer,  # type: ignore[no-untyped-def]
) -> None:
    text = "hello world " * 1500
    n = len(tokenizer(text).input_ids)
    assert n > LIMIT
    raw = client.completions.with_raw_response.create(model=MODEL_NAME, prompt=text, max_tokens=16)
    assert raw.headers[HEADER] == str(n - (LIMIT - 16))
    out = raw.parse()
    assert out.usage is not None and out.usage.prompt_tokens == LIMIT - 16


def test_streams_report_truncation_in_the_header(http: httpx.Client) -> None:
    with http.stream(
        "POST", "/v1/completions", json={"prompt": ids(LIMIT), "max_tokens": 2, "stream": True}
    ) as r:
        assert r.status_code == 200
        assert r.headers[HEADER] == "2"


@pytest.mark.parametrize("mode", ["left", "error"])
def test_max_tokens_that_leaves_no_room_is_400(
    mode: str, http: httpx.Client, strict: httpx.Client
) -> None:
    c = http if mode == "left" else strict
    r = complete(c, prompt=[1], max_tokens=LIMIT)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    assert str(LIMIT) in err["message"]


@pytest.mark.parametrize("mode", ["left", "error"])
def test_largest_max_tokens_fits_with_a_one_token_prompt(
    mode: str, http: httpx.Client, strict: httpx.Client
) -> None:
    c = http if mode == "left" else strict
    body = {"prompt": [1], "max_tokens": LIMIT - 1, "stream": True}
    with c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers[HEADER] == "0"
        # Accepted and streaming; closing here aborts the long generation.
        next(r.iter_lines())


def test_error_mode_rejects_one_token_over_naming_the_numbers(strict: httpx.Client) -> None:
    ok = complete(strict, prompt=ids(LIMIT - 4), max_tokens=4)
    assert ok.status_code == 200 and ok.headers[HEADER] == "0"
    r = complete(strict, prompt=ids(LIMIT - 3), max_tokens=4)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "context_length_exceeded"
    for number in ("2048", "2049", "2045", "4"):
        assert number in err["message"]
    stream = strict.post(
        "/v1/completions", json={"prompt": ids(LIMIT - 3), "max_tokens": 4, "stream": True}
    )
    assert stream.status_code == 400


@pytest.mark.parametrize("mode", ["left", "error"])
def test_truncate_prompt_tokens_is_honoured(
    mode: str, http: httpx.Client, strict: httpx.Client
) -> None:
    c = http if mode == "left" else strict
    r = complete(c, prompt=ids(100), max_tokens=2, truncate_prompt_tokens=10)
    assert r.status_code == 200
    assert r.headers[HEADER] == "90"
    assert r.json()["usage"]["prompt_tokens"] == 10


def test_truncate_prompt_tokens_minus_one_means_the_models_limit(
    http: httpx.Client, strict: httpx.Client
) -> None:
    # -1 (vLLM's "the model's limit"): a prompt that fits is untouched; one
    # that does not is handled by the gateway's policy, as without the field.
    r = complete(http, prompt=ids(100), max_tokens=2, truncate_prompt_tokens=-1)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 100
    assert r.headers[HEADER] == "0"
    r = complete(http, prompt=ids(LIMIT + 10), max_tokens=8, truncate_prompt_tokens=-1)
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == LIMIT - 8
    assert r.headers[HEADER] == str(10 + 8)
    r = complete(strict, prompt=ids(LIMIT + 10), max_tokens=8, truncate_prompt_tokens=-1)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    for bad in (0, -2):
        r = complete(http, prompt=ids(10), max_tokens=2, truncate_prompt_tokens=bad)
        assert r.status_code == 400, bad
        assert r.json()["error"]["param"] == "truncate_prompt_tokens"
