"""The Batch API on the real engine, through the official openai SDK: a file
of completions (greedy, and scoring with echo + logprobs) and a batch run
on it; each line's answer equals the online answer to the same body."""

from __future__ import annotations

import io
import json

import openai
import pytest

from tests.support.gateway import API_KEY, MODEL_NAME, Gateway
from tests.support.wait import until


def bodies() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(6):
        out.append({"model": MODEL_NAME, "prompt": f"Story {i}: once", "max_tokens": 8,
                    "temperature": 0})  # fmt: skip
    out.append({"model": MODEL_NAME, "prompt": "The cat sat", "max_tokens": 0, "echo": True,
                "logprobs": 1})  # fmt: skip
    return out


def test_a_batch_answers_each_line_as_online_requests_are_answered(
    client: openai.OpenAI,
) -> None:
    lines = [
        {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/completions", "body": b}
        for i, b in enumerate(bodies())
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines).encode()
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(text)), purpose="batch")
    assert uploaded.bytes == len(text) and uploaded.purpose == "batch"
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
    )
    assert batch.request_counts is not None and batch.request_counts.total == len(lines)

    def done() -> object:
        b = client.batches.retrieve(batch.id)
        return b if b.status == "completed" else None

    finished = until(done, "the batch completes", within=180, every=0.5)
    assert finished.request_counts.completed == len(lines)  # type: ignore[attr-defined]
    assert finished.error_file_id is None  # type: ignore[attr-defined]
    out = client.files.content(finished.output_file_id).text  # type: ignore[attr-defined]
    answers = [json.loads(x) for x in out.splitlines()]
    assert [a["custom_id"] for a in answers] == [
        x["custom_id"] for x in lines
    ]  # once each, in order
    for line, answer in zip(lines, answers, strict=True):
        assert answer["response"]["status_code"] == 200 and answer["error"] is None
        online = client.completions.create(**line["body"]).model_dump()  # type: ignore[arg-type]
        got = answer["response"]["body"]
        assert got["choices"][0]["text"] == online["choices"][0]["text"], line["custom_id"]
        assert got["choices"][0]["logprobs"] == online["choices"][0]["logprobs"]
        assert got["usage"]["completion_tokens"] == online["usage"]["completion_tokens"]
    listed = client.batches.list(limit=100)
    assert batch.id in [b.id for b in listed.data]


def test_a_bad_file_is_refused_naming_its_line_and_ids_are_not_probed(
    client: openai.OpenAI, gateway: Gateway
) -> None:
    text = b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}\n{oops\n'
    uploaded = client.files.create(file=("bad.jsonl", io.BytesIO(text)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as exc:
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
        )
    assert "Line 2" in exc.value.message
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-nope")
    assert client.files.delete(uploaded.id).deleted
    # an upload may be larger than GATEWAY_MAX_BODY_BYTES (1 MiB): a batch file's limit
    big = (json.dumps({"custom_id": "x" * 1000}) + "\n").encode() * 2048  # ~2 MiB
    assert client.files.create(file=("big.jsonl", io.BytesIO(big)), purpose="batch").bytes == len(
        big
    )
    assert client.models.list().data


def test_a_tenants_files_and_batches_are_not_anothers(secured: Gateway) -> None:
    """Two keys: what one made is a 404 to the other, as a missing id is."""
    mine, theirs = (
        openai.OpenAI(base_url=f"{secured.url}/v1", api_key=key, max_retries=0)
        for key in (API_KEY, "sk-other-key")
    )
    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions",
            "body": {"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 2}}  # fmt: skip
    f = mine.files.create(file=("a.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch")
    batch = mine.batches.create(
        input_file_id=f.id, endpoint="/v1/completions", completion_window="24h"
    )
    for call in (
        lambda: theirs.files.retrieve(f.id),
        lambda: theirs.files.content(f.id),
        lambda: theirs.files.delete(f.id),
        lambda: theirs.batches.retrieve(batch.id),
        lambda: theirs.batches.cancel(batch.id),
        lambda: theirs.batches.create(
            input_file_id=f.id, endpoint="/v1/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert [x.id for x in theirs.files.list().data] == []
    assert mine.files.retrieve(f.id).id == f.id  # still the owner's
