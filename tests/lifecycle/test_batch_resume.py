"""Batches survive a gateway killed with SIGKILL: started again on the same
state, it takes up the lines it had not answered, and the output file holds
every custom_id exactly once."""

from __future__ import annotations

import io
import json
from pathlib import Path

import openai
import pytest

from tests.support import gateway as support
from tests.support.gateway import MODEL_NAME, Gateway
from tests.support.wait import until

pytestmark = pytest.mark.engine

LINES = 24
# Two engine places: a batch may fill one (share 0.75), so its lines run one
# after another and the kill lands mid-batch.
ENV = {"GATEWAY_MAX_NUM_SEQS": "2"}


def _client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)


def test_a_batch_resumes_after_sigkill_and_answers_each_line_once(
    model_dir: Path, tmp_path: Path
) -> None:
    args = ("--warmup", "minimal", "--data-dir", str(tmp_path / "state"))
    gw = support.start_gateway(model_dir, tmp_path / "gw1.log", *args, env=ENV)
    try:
        client = _client(gw)
        lines = [
            {"custom_id": f"id-{i}", "method": "POST", "url": "/v1/completions",
             "body": {"model": MODEL_NAME, "prompt": f"Line {i}", "max_tokens": 64,
                      "ignore_eos": True, "temperature": 0}}
            for i in range(LINES)
        ]  # fmt: skip
        text = "".join(json.dumps(x) + "\n" for x in lines).encode()
        f = client.files.create(file=("in.jsonl", io.BytesIO(text)), purpose="batch")
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/completions", completion_window="24h"
        )

        def some_done() -> int:
            counts = client.batches.retrieve(batch.id).request_counts
            return counts.completed if counts is not None else 0

        done_before = until(some_done, "a line answered", within=120, every=0.05)
    finally:
        gw.proc.kill()  # SIGKILL: no drain, no lease given back
    gw.proc.wait(30)
    assert done_before < LINES  # the kill came mid-batch

    gw2 = support.start_gateway(model_dir, tmp_path / "gw2.log", *args, env=ENV)
    try:
        client = _client(gw2)

        def completed() -> object:
            b = client.batches.retrieve(batch.id)
            return b if b.status == "completed" else None

        done = until(completed, "the batch completes after the restart", within=240, every=0.5)
        out = client.files.content(done.output_file_id).text  # type: ignore[attr-defined]
        ids = [json.loads(x)["custom_id"] for x in out.splitlines()]
        assert ids == [x["custom_id"] for x in lines]  # each exactly once, in order
    finally:
        support.stop_gateway(gw2)
