"""Scoring (echo, max_tokens 0) against vLLM's own OpenAI server on the same
engine arguments and prompts: the same tokens, logprobs, top logprobs and
offsets, number for number, so an evaluation harness scores the same through
either. (One difference, on purpose: vLLM's usage counts the token its engine
ran and dropped as a completion token; here completion_tokens is 0.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.servers import Server, vllm_server
from tests.support.gateway import MODEL_NAME, Gateway

PROMPTS = ["The capital of France is", "Hello, my name is Ada and I", "1 + 1 ="]


@pytest.fixture(scope="module")
def vllm(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = vllm_server(str(model_dir), tmp_path_factory.mktemp("vllm") / "vllm.log", MODEL_NAME)
    try:
        server.wait_ready(600)
        yield server
    finally:
        server.stop()


def score(url: str, prompt: str) -> dict:  # type: ignore[type-arg]
    r = httpx.post(
        f"{url}/v1/completions",
        json={"model": MODEL_NAME, "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 3},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_scoring_matches_vllms_server(gateway: Gateway, vllm: Server, prompt: str) -> None:
    ours, theirs = score(gateway.url, prompt), score(vllm.url, prompt)
    a, b = ours["choices"][0], theirs["choices"][0]
    assert a["text"] == b["text"] == prompt
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert a["logprobs"][key] == b["logprobs"][key], key
    assert ours["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]
    # vLLM's server counts the one token its engine ran and then dropped; what
    # was completed here is nothing.
    assert ours["usage"]["completion_tokens"] == 0
    assert theirs["usage"]["completion_tokens"] == 1
