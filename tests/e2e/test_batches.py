"""The Batch API on the real engine, through the official openai SDK: a file
of completions (greedy, and scoring with echo + logprobs) and one of chat,
each line's answer equal to the online answer to the same body; cancel and
expiry keep the lines done so far; bad files; another tenant's 404."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from tests.support.batches import answers, lines_of, submit, wait_for
from tests.support.gateway import API_KEY, MODEL_NAME, Gateway
from tests.support.metrics import scrape
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
    lines = lines_of(bodies())
    batch = submit(client, lines)
    assert batch.request_counts is not None and batch.request_counts.total == len(lines)
    finished = wait_for(client, batch.id, "completed")
    assert finished.request_counts is not None
    assert finished.request_counts.completed == len(lines)
    assert finished.error_file_id is None
    got = answers(client, finished.output_file_id)
    assert [a["custom_id"] for a in got] == [x["custom_id"] for x in lines]  # once, in order
    for line, answer in zip(lines, got, strict=True):
        assert answer["response"]["status_code"] == 200 and answer["error"] is None
        online = client.completions.create(**line["body"]).model_dump()
        body = answer["response"]["body"]
        assert body["choices"][0]["text"] == online["choices"][0]["text"], line["custom_id"]
        assert body["choices"][0]["logprobs"] == online["choices"][0]["logprobs"]
        assert body["usage"]["completion_tokens"] == online["usage"]["completion_tokens"]
    listed = client.batches.list(limit=100)
    assert batch.id in [b.id for b in listed.data]


def test_a_chat_batch_answers_as_online_chat_and_a_bad_line_has_its_error(
    client: openai.OpenAI,
) -> None:
    chats: list[dict[str, object]] = [
        {"model": MODEL_NAME, "messages": [{"role": "user", "content": f"Name a colour, {i}"}],
         "max_tokens": 8, "temperature": 0.8, "seed": 7 + i}
        for i in range(3)
    ]  # fmt: skip
    chats.append({"model": MODEL_NAME, "messages": [], "max_tokens": 8})  # no messages: 400
    batch = submit(client, lines_of(chats, "/v1/chat/completions"))
    finished = wait_for(client, batch.id, "completed")
    assert finished.request_counts is not None
    assert (finished.request_counts.completed, finished.request_counts.failed) == (3, 1)
    for answer, body in zip(answers(client, finished.output_file_id), chats, strict=False):
        online = client.chat.completions.create(**body).model_dump()  # type: ignore[call-overload]
        got = answer["response"]["body"]
        assert got["object"] == "chat.completion"
        message = online["choices"][0]["message"]
        assert got["choices"][0]["message"] == {"role": "assistant", "content": message["content"]}
    [error] = answers(client, finished.error_file_id)
    assert error["custom_id"] == "line-3" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["type"] == "invalid_request_error"


def test_cancel_and_expiry_keep_the_lines_done_so_far(client: openai.OpenAI) -> None:
    long = [{"model": MODEL_NAME, "prompt": f"Chapter {i}", "max_tokens": 512,
             "ignore_eos": True} for i in range(60)]  # fmt: skip
    cancelled = submit(client, lines_of(long))
    expiring = submit(client, lines_of(long), window="2s")
    assert client.batches.cancel(cancelled.id).status == "cancelling"
    for batch_id, status in ((cancelled.id, "cancelled"), (expiring.id, "expired")):
        ended = wait_for(client, batch_id, status, within=60)
        assert ended.request_counts is not None
        done = ended.request_counts.completed
        assert done < 60  # ended before its lines were all answered
        kept = answers(client, ended.output_file_id) if done else []
        assert len(kept) == done  # the lines done so far are in its output file
    assert client.batches.cancel(cancelled.id).status == "cancelled"  # no way back


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


def engine_requests(gateway: Gateway) -> float:
    """Requests the engine ran to their length (vLLM's own counter), once
    nothing runs in it (an earlier test's aborted lines are counted apart)."""

    def idle() -> dict[str, float] | None:
        samples = scrape(gateway.url)
        busy = sum(v for (n, _), v in samples.items() if n in ENGINE_BUSY)
        return None if busy else {n: v for (n, lb), v in samples.items()
                                  if n == "vllm:request_success_total"
                                  and ("finished_reason", "length") in lb}  # fmt: skip

    return sum(until(idle, "the engine idle", within=120, every=0.2).values())


ENGINE_BUSY = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def test_lines_longer_than_the_lease_each_run_once(client: openai.OpenAI, gateway: Gateway) -> None:
    # The session gateway's lease is 2 s; each line runs longer than that,
    # and those waiting for a place wait longer too. Before the renewal,
    # every pass claimed them again (24 lines ran 73 engine requests).
    body = {"model": MODEL_NAME, "prompt": "A long one:", "max_tokens": 1500, "temperature": 0,
            "ignore_eos": True}  # fmt: skip
    lines = lines_of([{**body, "prompt": f"Tale {i}:"} for i in range(12)])
    before = engine_requests(gateway)
    started = time.monotonic()
    batch = submit(client, lines)
    finished = wait_for(client, batch.id, "completed", within=400)
    took = time.monotonic() - started
    assert finished.request_counts is not None and finished.request_counts.completed == 12
    assert took > 2 * 2, f"the batch took {took:.1f} s: no line outlived the lease"
    assert engine_requests(gateway) - before == 12
    got = answers(client, finished.output_file_id)
    assert all(a["response"]["body"]["usage"]["completion_tokens"] == 1500 for a in got)
