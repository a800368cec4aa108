"""Bad input gets an OpenAI-style error without an echo of the input, and the
server keeps serving."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.gateway import MODEL_NAME

SECRET = "SENTINEL-3b9f"  # must never come back in an error body


def assert_openai_error(r: httpx.Response, status: int, param: str | None = None) -> dict:  # type: ignore[type-arg]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and isinstance(err["message"], str)
    assert "Traceback" not in r.text
    assert SECRET not in r.text
    if param is not None:
        assert err["param"] == param
    return err  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"prompt": "' + SECRET.encode() + b'", ', "not valid JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b'"' + SECRET.encode() + b'"', "JSON object"),
        (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "could not be parsed"),
    ],
)
def test_malformed_json_is_400(http: httpx.Client, content: bytes, message: str) -> None:
    r = http.post("/v1/completions", content=content, headers={"content-type": "application/json"})
    err = assert_openai_error(r, 400)
    assert err["type"] == "invalid_request_error"
    assert message in err["message"]


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
def test_a_body_not_declared_as_json_says_so(http: httpx.Client, content_type: str | None) -> None:
    # The first is what `curl -d` sends without -H 'Content-Type: application/json'.
    body = b'{"prompt": "x", "max_tokens": 1}'
    headers = {"content-type": content_type} if content_type else {}
    r = http.post("/v1/completions", content=body, headers=headers)
    err = assert_openai_error(r, 400)
    assert "Content-Type: application/json" in err["message"]
    declared = {"content-type": "application/json; charset=utf-8"}
    assert http.post("/v1/completions", content=body, headers=declared).status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 4}, "prompt"),
        ({"prompt": "x", "temperature": SECRET}, "temperature"),
        ({"prompt": "x", "temperature": 3}, "temperature"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": {"text": SECRET}}, "prompt"),
        ({"prompt": [1, SECRET]}, "prompt"),
        ({"prompt": "x", "stop": 5}, "stop"),
        (
            {"prompt": "x", "stream_options": {"include_usage": SECRET}},
            "stream_options.include_usage",
        ),
        ({"prompt": "x", "suffix": SECRET}, "suffix"),
        ({"prompt": "x", SECRET: 1}, SECRET),
        ({"prompt": "x", "frobnicate": 1}, "frobnicate"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": [99999]}, "prompt"),
        ({"prompt": "x", "logit_bias": {SECRET: 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"99999": 1}}, "logit_bias"),
        ({"prompt": "x", "logprobs": 1000}, "logprobs"),
        ({"prompt": "x", "n": 2, "best_of": 1}, "best_of"),
        ({"prompt": "x", "best_of": 2, "stream": True}, "best_of"),
        ({"prompt": "x", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        # Beyond int64 the engine cannot even be sent the request.
        ({"prompt": "x", "seed": 2**64}, "seed"),
        ({"prompt": "x", "top_k": 2**64}, "top_k"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(
    http: httpx.Client, body: dict, param: str
) -> None:  # type: ignore[type-arg]
    r = http.post("/v1/completions", json=body)
    if param == "frobnicate":  # an unknown field with a plain name is named, as OpenAI does
        err = assert_openai_error(r, 400, param)
        assert err["message"] == "Unrecognized request argument supplied: frobnicate"
        return
    if param == SECRET:  # any other unknown name is not reflected
        err = assert_openai_error(r, 400)
        assert err["message"] == "Unrecognized request argument supplied."
        assert err["param"] is None
        return
    err = assert_openai_error(r, 400, param)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", '{"prompt": "\\ud83d cut emoji"}', "prompt"),
        ("/v1/completions", '{"prompt": ["fine", "\\udc00"], "stream": true}', "prompt"),
        ("/v1/completions", '{"prompt": "x", "stop": ["\\ud800"]}', "stop"),
        ("/tokenize", '{"prompt": "\\ud83d"}', "prompt"),
    ],
)
def test_unpaired_surrogates_are_400(http: httpx.Client, path: str, body: str, param: str) -> None:
    # Valid JSON (a client cut a string inside an emoji), but not encodable text.
    r = http.post(path, content=body.encode(), headers={"content-type": "application/json"})
    err = assert_openai_error(r, 400, param)
    assert "unpaired surrogate" in err["message"]
    assert http.post("/tokenize", json={"prompt": "x"}).status_code == 200


def test_union_fields_say_what_they_accept(http: httpx.Client) -> None:
    err = assert_openai_error(
        http.post("/v1/completions", json={"prompt": [1, SECRET]}), 400, "prompt"
    )
    assert "list of token ids" in err["message"]
    err = assert_openai_error(
        http.post("/v1/completions", json={"prompt": "x", "stop": [1]}), 400, "stop"
    )
    assert "list of strings" in err["message"]


def test_engine_side_validation_is_a_400_in_both_modes(http: httpx.Client) -> None:
    # vLLM rejects n > 1 with greedy sampling; that must surface as a 400, streaming or not.
    for stream in (False, True):
        r = http.post(
            "/v1/completions", json={"prompt": "x", "n": 2, "temperature": 0, "stream": stream}
        )
        err = assert_openai_error(r, 400)
        assert "greedy" in err["message"]


def test_sdk_sees_bad_request_and_server_keeps_serving(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL_NAME, prompt="x", temperature=5)
    out = client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2)
    assert out.choices[0].finish_reason in ("length", "stop")


def test_unknown_route_and_method_are_openai_errors(http: httpx.Client) -> None:
    assert_openai_error(http.get("/v1/nope"), 404)
    assert_openai_error(http.get("/v1/completions"), 405)


def test_models_for_other_ids_are_404(http: httpx.Client) -> None:
    err = assert_openai_error(http.get("/v1/models/gpt-4"), 404, "model")
    assert err["code"] == "model_not_found"
