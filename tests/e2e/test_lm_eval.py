"""lm-eval-harness's `local-completions` model, unchanged, running a
loglikelihood (multiple-choice) task against the gateway: it scores with
`echo: true, max_tokens: 0, logprobs: 1`. Its per-choice loglikelihoods must
be the sums the gateway's own scoring gives for the same texts. The task and
its data are local files (no dataset hub here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import MODEL_NAME, Gateway

DOCS = [
    {"question": "The capital of France is", "choices": ["Paris", "Rome", "Lima"], "answer": 0},
    {"question": "Two plus two is", "choices": ["four", "five"], "answer": 0},
    {"question": "The sky is", "choices": ["blue", "green", "loud"], "answer": 0},
]


def task_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "gateway_mc.yaml").write_text(
        "task: gateway_mc\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files: {{test: {data}}}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n"
        "  - metric: acc\n"
    )
    return tmp_path


def continuation_logprob(url: str, tokenizer: Any, context: str, continuation: str) -> float:
    """Sum of the continuation's token logprobs, scored by the gateway itself,
    on the tokens lm-eval sends: no BOS, the continuation's tokens being those
    of context + continuation after the context's."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx) :]
    r = httpx.post(
        f"{url}/v1/completions",
        json={"prompt": ctx + cont, "max_tokens": 0, "echo": True, "logprobs": 1},
        timeout=60,
    ).json()["choices"][0]["logprobs"]
    return float(sum(r["token_logprobs"][-len(cont) :]))


def test_lm_eval_local_completions_scores_through_the_gateway(
    gateway: Gateway,
    model_dir: Path,
    tokenizer: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    import lm_eval
    from lm_eval.tasks import TaskManager

    results: Any = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "base_url": f"{gateway.url}/v1/completions",
            "model": MODEL_NAME,
            "tokenizer_backend": "huggingface",
            "tokenizer": str(model_dir),
            "num_concurrent": 1,
            "max_retries": 1,
        },
        tasks=["gateway_mc"],
        task_manager=TaskManager(include_path=str(task_dir(tmp_path))),
        log_samples=True,
    )
    acc = results["results"]["gateway_mc"]["acc,none"]
    assert 0.0 <= acc <= 1.0
    samples = results["samples"]["gateway_mc"]
    assert len(samples) == len(DOCS)
    for sample in samples:
        doc = sample["doc"]
        ours = [
            continuation_logprob(gateway.url, tokenizer, doc["question"], " " + c)
            for c in doc["choices"]
        ]
        theirs = []
        for resp in sample["filtered_resps"]:
            pair = resp[0] if isinstance(resp[0], list | tuple) else resp
            theirs.append(float(pair[0]))
        assert theirs == pytest.approx(ours, abs=1e-4), doc["question"]
