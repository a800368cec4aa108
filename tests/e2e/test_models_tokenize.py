"""/v1/models, /tokenize and /detokenize."""

from __future__ import annotations

import httpx
import openai

from tests.support.gateway import MODEL_NAME


def test_models_lists_the_served_model_with_its_limit(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]
    assert models[0].owned_by and models[0].created > 0
    assert http.get("/v1/models").json()["data"][0]["max_model_len"] == 2048
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_tokenize_counts_like_the_model_tokenizer(http: httpx.Client, tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = "The capital of France is 世界"
    r = http.post(
        "/tokenize", json={"model": MODEL_NAME, "prompt": text, "return_token_strs": True}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["tokens"] == tokenizer(text).input_ids
    assert body["count"] == len(body["tokens"])
    assert body["max_model_len"] == 2048
    assert body["token_strs"][:3] == ["<s>", "\u2581The", "\u2581capital"]
    bare = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert bare["tokens"] == body["tokens"][1:]


def test_detokenize_round_trips(http: httpx.Client) -> None:
    ids = http.post(
        "/tokenize", json={"prompt": "naïve 😀 text", "add_special_tokens": False}
    ).json()["tokens"]
    r = http.post("/detokenize", json={"tokens": ids})
    assert r.status_code == 200
    assert r.json() == {"prompt": "naïve 😀 text"}
    assert http.post("/detokenize", json={"tokens": [32000]}).status_code == 400
    assert http.post("/tokenize", json={"model": "other", "prompt": "x"}).status_code == 404


def test_health_is_ok_when_serving(http: httpx.Client) -> None:
    r = http.get("/health")
    assert r.status_code == 200
