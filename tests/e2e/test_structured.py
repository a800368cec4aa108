"""Structured output and scoring on the real engine. The fixture model writes
gibberish, which is the point: whatever it writes under a constraint must
still be valid, for every answer that finished (`stop`); an answer cut by
max_tokens says `length`. Bad constraints are 400s that name the field, and
the server keeps serving."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.support.gateway import MODEL_NAME
from tests.support.metrics import scrape

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "level": {"type": "string", "enum": ["low", "high"]},
        "n": {"type": "integer"},
    },
    "required": ["ok", "level"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "status", "schema": SCHEMA, "strict": True},
}
SEEDS = (1, 2, 3, 4)


def finished(texts: Sequence[tuple[str, str | None]]) -> list[str]:
    """The texts that ended with `stop`; at least one, or the test shows nothing."""
    done = [t for t, reason in texts if reason == "stop"]
    assert all(reason in ("stop", "length") for _, reason in texts), texts
    assert done, f"no answer finished within max_tokens: {texts}"
    return done


def test_json_schema_answers_validate_whole_and_streamed(client: openai.OpenAI) -> None:
    answers: list[tuple[str, str | None]] = []
    for seed in SEEDS:
        whole = client.completions.create(
            model=MODEL_NAME,
            prompt="Status:",
            max_tokens=96,
            n=3,
            seed=seed,
            temperature=1.0,
            extra_body={"response_format": JSON_SCHEMA_FORMAT},
        )
        answers += [(c.text, c.finish_reason) for c in whole.choices]
        stream = client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": "Report the status."}],
            max_tokens=96,
            n=3,
            seed=seed,
            temperature=1.0,
            response_format=JSON_SCHEMA_FORMAT,  # type: ignore[arg-type]
            stream=True,
        )
        parts: dict[int, list[str]] = {}
        reasons: dict[int, str | None] = {}
        for chunk in stream:
            for c in chunk.choices:
                parts.setdefault(c.index, []).append(c.delta.content or "")
                if c.finish_reason is not None:
                    reasons[c.index] = c.finish_reason
        assert sorted(parts) == [0, 1, 2]
        answers += [("".join(parts[i]), reasons.get(i)) for i in range(3)]
    for text in finished(answers):
        jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_answers_parse(client: openai.OpenAI) -> None:
    answers: list[tuple[str, str | None]] = []
    for seed in SEEDS:
        r = client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": "Any JSON."}],
            max_tokens=96,
            n=3,
            seed=seed,
            temperature=1.0,
            response_format={"type": "json_object"},
        )
        answers += [(c.message.content or "", c.finish_reason) for c in r.choices]
    for text in finished(answers):
        assert isinstance(json.loads(text), dict)


def test_choice_and_regex_hold_and_the_older_names_mean_the_same(
    client: openai.OpenAI,
) -> None:
    choices = ["yes", "no", "maybe later"]
    pattern = r"[0-9]{3}-[a-z]{2}"
    for seed in SEEDS:
        bodies: list[dict[str, Any]] = [
            {"structured_outputs": {"choice": choices}},
            {"guided_choice": choices},
        ]
        for body in bodies:
            r = client.completions.create(
                model=MODEL_NAME, prompt="Answer:", max_tokens=16, n=2, seed=seed,
                temperature=1.0, extra_body=body,
            )  # fmt: skip
            for c in r.choices:
                assert c.finish_reason == "stop" and c.text in choices, c
        bodies = [{"structured_outputs": {"regex": pattern}}, {"guided_regex": pattern}]
        for body in bodies:
            r = client.completions.create(
                model=MODEL_NAME, prompt="Code:", max_tokens=16, n=2, seed=seed,
                temperature=1.0, extra_body=body,
            )  # fmt: skip
            for c in r.choices:
                assert c.finish_reason == "stop" and re.fullmatch(pattern, c.text), c


def test_a_grammar_is_enforced(client: openai.OpenAI) -> None:
    grammar = 'root ::= "<" ("a" | "b")+ ">"'
    r = client.completions.create(
        model=MODEL_NAME, prompt="x", max_tokens=24, n=3, seed=5, temperature=1.0,
        extra_body={"structured_outputs": {"grammar": grammar}},
    )  # fmt: skip
    texts = finished([(c.text, c.finish_reason) for c in r.choices])
    for text in texts:
        assert re.fullmatch(r"<[ab]+>", text), text


BAD = [
    ({"structured_outputs": {"json": {"type": "strin"}}}, "structured_outputs.json"),
    ({"structured_outputs": {"regex": "[unclosed"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"grammar": "root ::= oops ("}}, "structured_outputs.grammar"),
    (
        {"response_format": {"type": "json_object"}, "guided_choice": ["a"]},
        "guided_choice",
    ),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    (
        {
            "structured_outputs": {
                "json": {"type": "object", "description": "x" * 70_000},
            }
        },
        "structured_outputs.json",
    ),
]


@pytest.mark.parametrize(("extra", "param"), BAD, ids=[p for _, p in BAD])
@pytest.mark.parametrize("stream", [False, True])
def test_a_bad_constraint_is_a_400_and_the_server_keeps_serving(
    http: httpx.Client, extra: dict[str, Any], param: str, stream: bool
) -> None:
    r = http.post(
        "/v1/completions",
        json={"prompt": "hi", "max_tokens": 4, "stream": stream, **extra},
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "oops (" not in error["message"] and "strin" not in error["message"]
    ok = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    assert ok.status_code == 200


def test_rejected_constraints_and_constrained_requests_are_counted(http: httpx.Client) -> None:
    before = scrape(http)
    http.post("/v1/completions", json={"prompt": "hi", "structured_outputs": {"regex": "("}})
    http.post(
        "/v1/completions",
        json={"prompt": "hi", "max_tokens": 4, "structured_outputs": {"regex": "[a-c]{2}"}},
    )
    after = scrape(http)
    labels = {"model": MODEL_NAME}
    for name, extra in (
        ("gateway_rejected_requests_total", {"reason": "invalid_constraint"}),
        ("gateway_structured_requests_total", {"kind": "regex"}),
    ):
        key = (name, tuple(sorted({**labels, **extra}.items())))
        assert key in after, f"{name} not exported"
        assert after[key] - before.get(key, 0) == 1, name


def test_scoring_returns_the_prompt_with_its_logprobs(http: httpx.Client) -> None:
    prompt = "The capital of France is"
    scored = http.post(
        "/v1/completions",
        json={"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1},
    ).json()
    choice = scored["choices"][0]
    assert choice["text"] == prompt
    lp = choice["logprobs"]
    assert lp["tokens"][0] == "<s>" and lp["token_logprobs"][0] is None
    assert all(isinstance(v, float) for v in lp["token_logprobs"][1:])
    assert scored["usage"]["completion_tokens"] == 0
    assert scored["usage"]["prompt_tokens"] == len(lp["tokens"])
    # The same numbers as the prompt part of an echo that generates a token.
    generated = http.post(
        "/v1/completions",
        json={"prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0},
    ).json()["choices"][0]["logprobs"]
    n = len(lp["tokens"])
    assert generated["tokens"][:n] == lp["tokens"]
    assert generated["token_logprobs"][:n] == lp["token_logprobs"]
    assert len(generated["tokens"]) == n + 1
    refused = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 0})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"
