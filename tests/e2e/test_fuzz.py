"""schemathesis against the app's own OpenAPI document on the real server:
schema-valid and schema-violating requests to every operation. No 5xx, every
error in OpenAI shape, and no error that echoes a value the client sent."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.support.gateway import MODEL_NAME, Gateway

EXAMPLES = {GenerationMode.POSITIVE: 150, GenerationMode.NEGATIVE: 150}
# Cases each mode must run (>= 500 in all), of which on /v1/completions:
MIN_CASES = 250
MIN_COMPLETION_CASES = 125


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def strings(value: Any) -> list[str]:
    """Every string value in a request, and every key that is not a plain
    identifier (an unknown argument may be named, like OpenAI does)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        keys = [k for k in value if isinstance(k, str) and not IDENTIFIER.fullmatch(k)]
        return keys + [s for v in value.values() for s in strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in strings(v)]
    return []


def tame(body: Any) -> None:
    """Keep schema-valid generations short on the CPU engine (the checks are
    about validation and errors, not long outputs); keep the served model
    name often enough that requests reach the engine."""
    if not isinstance(body, dict):
        return
    if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 8:
        body["max_tokens"] = 8
    for key in ("n", "best_of", "min_tokens"):
        if isinstance(body.get(key), int) and body[key] > 4:
            body[key] = 4
    if "model" in body and body.get("stream") is not True:
        body["model"] = MODEL_NAME


@pytest.fixture(scope="module")
def api(gateway: Gateway) -> Any:
    SCHEMA_WORDS.update(schema_words(httpx.get(f"{gateway.url}/openapi.json").json()))
    return schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")


# Values the API itself documents (enums, consts: "system", "assistant", ...):
# an error may list what is accepted without echoing the client.
SCHEMA_WORDS: set[str] = set()


def schema_words(node: Any) -> set[str]:
    words: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "enum" and isinstance(value, list):
                words |= {v for v in value if isinstance(v, str)}
            elif key == "const" and isinstance(value, str):
                words.add(value)
            else:
                words |= schema_words(value)
    elif isinstance(node, list):
        for item in node:
            words |= schema_words(item)
    return words


def operations(api: Any) -> list[Any]:
    ops = [result.ok() for result in api.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in ops} >= {
        "POST /v1/completions",
        "POST /tokenize",
        "POST /detokenize",
        "GET /v1/models/{model_id}",
    }
    return ops


def replaced(value: Any, old: str, new: str) -> Any:
    """`value` with every string (and key) equal to `old` made `new`."""
    if isinstance(value, str):
        return new if value == old else value
    if isinstance(value, dict):
        return {replaced(k, old, new): replaced(v, old, new) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(replaced(v, old, new) for v in value)
    return value


def echoes(case: Any, sent: str, url: str) -> bool:
    """Whether the answer repeats `sent`, or only has it in its own words (a
    fuzzed "Invali" is in "Invalid value"): ask again with `sent` replaced by
    a marker of the same length and look for the marker."""
    marker = ("zqxj" * len(sent))[: len(sent)]
    saved = case.body, case.query, case.path_parameters
    try:
        case.body, case.query, case.path_parameters = (replaced(v, sent, marker) for v in saved)
        return marker in case.call(base_url=url, timeout=60).text
    finally:
        case.body, case.query, case.path_parameters = saved


def check_response(name: str, case: Any, response: Any, url: str) -> None:
    status = response.status_code
    assert status < 500, (name, status, response.text[:500])
    if status >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
        sent = strings(case.body) + strings(case.query or {})
        sent += strings(list((case.path_parameters or {}).values()))
        echoed = [s for s in sent if len(s) >= 6 and s in response.text and s not in SCHEMA_WORDS]
        echoed = [s for s in echoed if echoes(case, s, url)]
        assert not echoed, (name, status, echoed, response.text[:300])


def fuzz(op: Any, mode: GenerationMode, url: str, ran: Counter[str]) -> None:
    name = f"{op.method.upper()} {op.path}"

    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every CI run
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode), tamed=st.booleans())
    def check(case: Any, tamed: bool) -> None:
        if mode is GenerationMode.POSITIVE or tamed:
            tame(case.body)
        check_response(name, case, case.call(base_url=url, timeout=60), url)
        ran[name] += 1

    try:
        check()
    except Unsatisfiable:
        # No schema-violating input exists: an operation without a body whose
        # only inputs, if any, are free strings (GET /v1/files, a file's id).
        assert mode is GenerationMode.NEGATIVE and "requestBody" not in op.definition.raw, name


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=str)
def test_fuzz_operations(api: Any, gateway: Gateway, mode: GenerationMode) -> None:
    ran: Counter[str] = Counter()
    for op in operations(api):
        fuzz(op, mode, gateway.url, ran)
    # Each run counts its own cases: it holds alone, with -k, under xdist.
    assert sum(ran.values()) >= MIN_CASES, dict(ran)
    assert ran["POST /v1/completions"] >= MIN_COMPLETION_CASES, dict(ran)
