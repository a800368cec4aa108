"""The batch runner on a scripted line runner (no engine): every line
answered once in the input's order, failures in the error file, only as
many lines at once as the engine has room for, a budget's edge pauses the
batch instead of failing it, cancel and expiry end it with what was done."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from app.batches.backends import SqliteStore
from app.batches.records import Line
from app.batches.runner import BatchRunner
from app.errors import BudgetExceeded, InvalidRequest
from app.observability.batch_metrics import BatchMetrics

Body = dict[str, Any]

pytestmark = pytest.mark.anyio


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "b.db")


def job(store: SqliteStore, n: int, expires_in: float = 3600) -> None:
    batch = {"id": "b", "object": "batch", "endpoint": "/v1/completions", "status": "in_progress",
             "created_at": int(time.time()), "expires_at": time.time() + expires_in}  # fmt: skip
    store.create_batch(batch, "t", [Line("b", i, f"c{i}", {"i": i}) for i in range(n)])


async def drive(runner: BatchRunner, store: SqliteStore, within: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        await runner.step()
        await asyncio.sleep(0.01)
        batch = store.batch("b")
        assert batch is not None
        if batch["status"] in ("completed", "cancelled", "expired", "failed"):
            return batch
        assert time.monotonic() < deadline, batch


def lines_of(store: SqliteStore, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    content = store.content(file_id, "t")
    assert content is not None
    return [json.loads(x) for x in content.decode().splitlines()]


async def test_every_line_once_in_order_with_failures_apart(store: SqliteStore) -> None:
    job(store, 7)
    running = 0
    most = 0

    async def run_line(
        tenant: str, batch_id: str, endpoint: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        nonlocal running, most
        assert (tenant, endpoint) == ("t", "/v1/completions")
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01 * (7 - body["i"]))  # later lines finish first
        running -= 1
        if body["i"] == 3:
            raise InvalidRequest("bad line", param="prompt")
        return {"answer": body["i"]}

    registry = CollectorRegistry()
    runner = BatchRunner(store, run_line, lambda: 2, BatchMetrics(registry, "m"), measure_every=0)
    await runner.step()
    assert registry.get_sample_value("gateway_batch_backlog_lines", {"model": "m"}) == 7
    # no max_tokens in these bodies: each counts the endpoint's default, 16
    assert registry.get_sample_value("gateway_batch_backlog_tokens", {"model": "m"}) == 7 * 16
    batch = await drive(runner, store)
    assert batch["status"] == "completed" and most <= 2  # never more than the room
    await runner.step()
    done = {"model": "m", "outcome": "done"}
    assert registry.get_sample_value("gateway_batch_lines_total", done) == 6
    jobs = {"model": "m", "status": "completed"}
    assert registry.get_sample_value("gateway_batch_jobs", jobs) == 1
    assert batch["request_counts"] == {"total": 7, "completed": 6, "failed": 1}
    out = lines_of(store, batch["output_file_id"])
    assert [x["custom_id"] for x in out] == ["c0", "c1", "c2", "c4", "c5", "c6"]
    assert [x["response"]["body"]["answer"] for x in out] == [0, 1, 2, 4, 5, 6]
    [err] = lines_of(store, batch["error_file_id"])
    assert err["custom_id"] == "c3" and err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["param"] == "prompt"


async def test_no_room_no_line_and_a_budget_edge_pauses(store: SqliteStore) -> None:
    job(store, 2)
    room = 0
    refusals = [BudgetExceeded("spent", retry_after=1)]  # the first line meets the edge

    async def run_line(*line: Any) -> dict[str, Any]:
        if refusals:
            raise refusals.pop()
        return {"ok": line[3]["i"]}

    runner = BatchRunner(store, run_line, room=lambda: room)
    assert not await runner.step()  # the engine is busy: nothing starts
    room = 4
    await runner.step()
    await asyncio.sleep(0.05)
    assert store.counts("b").completed + store.counts("b").failed < 2  # paused, not failed
    batch = await drive(runner, store)
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}


async def test_cancel_and_expiry_end_with_what_was_done(store: SqliteStore) -> None:
    job(store, 3, expires_in=0.3)
    gate = asyncio.Event()

    async def run_line(
        tenant: str, batch_id: str, endpoint: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        if body["i"] > 0:
            await gate.wait()
        return {"i": body["i"]}

    runner = BatchRunner(store, run_line, room=lambda: 1)
    await runner.step()
    await asyncio.sleep(0.4)
    batch = await drive(runner, store)
    assert batch["status"] == "expired"
    assert [x["custom_id"] for x in lines_of(store, batch["output_file_id"])] == ["c0"]
    gate.set()
