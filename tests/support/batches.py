"""Batches through the official openai SDK, for the tests that run them on
real gateways: a file of request lines submitted, a status waited for, the
custom_ids of an output file."""

from __future__ import annotations

import io
import json
from typing import Any

import openai
from openai.types import Batch

from tests.support.wait import until


def lines_of(bodies: list[dict[str, Any]], url: str = "/v1/completions") -> list[dict[str, Any]]:
    """One batch line per body, custom_id `line-<i>`."""
    return [
        {"custom_id": f"line-{i}", "method": "POST", "url": url, "body": body}
        for i, body in enumerate(bodies)
    ]


def submit(client: openai.OpenAI, lines: list[dict[str, Any]], window: str = "24h") -> Batch:
    """The lines uploaded as a file and a batch created on it."""
    text = "".join(json.dumps(x) + "\n" for x in lines).encode()
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(text)), purpose="batch")
    assert uploaded.bytes == len(text) and uploaded.purpose == "batch"
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint=lines[0]["url"],
        completion_window=window,  # type: ignore[arg-type]  # ours: up to 24h
    )


def wait_for(client: openai.OpenAI, batch_id: str, status: str, within: float = 180) -> Batch:
    def reached() -> Batch | None:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status == status else None

    return until(reached, f"batch {status}", within=within, every=0.25)


def answers(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """An output or error file's lines, parsed."""
    assert file_id is not None
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]
