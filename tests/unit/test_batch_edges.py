"""The batch runner at its edges, on a real SQLite store and a scripted line
runner: leases renewed while a line is held (a line longer than its lease
runs once); at a budget's edge only the line that met it is given back
(lines running go on); a failed write keeps its answers; a cancel writes
what its lines had answered; a transient error runs the line again; a
removed tenant's batch fails and starts no more lines. And the input
file's bad values: a huge max_tokens, a NUL in a custom_id, raw U+2028
inside a JSON string."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from app.batches.backends import SqliteStore
from app.batches.input import read_input
from app.batches.records import Line
from app.batches.runner import GONE, BatchRunner
from app.errors import BudgetExceeded, InvalidRequest, Overloaded
from tests.unit.test_batch_runner import drive, job, lines_of

pytestmark = pytest.mark.anyio


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "b.db")


async def test_a_line_longer_than_its_lease_runs_once(store: SqliteStore) -> None:
    job(store, 4)
    runs: Counter[int] = Counter()

    async def run_line(tenant: str, batch_id: str, endpoint: str, body: dict[str, Any]) -> Any:
        runs[body["i"]] += 1
        await asyncio.sleep(0.6)  # three leases long
        return {"i": body["i"]}

    # Room for 2: the other 2 wait in the ready queue past their lease too.
    runner = BatchRunner(store, run_line, lambda: 2, lease=0.2, ahead=2)
    batch = await drive(runner, store)
    assert batch["status"] == "completed"
    assert runs == Counter({0: 1, 1: 1, 2: 1, 3: 1})  # before: each claimed again and rerun
    assert len(lines_of(store, batch["output_file_id"])) == 4


async def test_a_budget_edge_gives_back_only_the_line_that_met_it(store: SqliteStore) -> None:
    job(store, 3)
    runs: Counter[int] = Counter()
    gate = asyncio.Event()

    async def run_line(tenant: str, batch_id: str, endpoint: str, body: dict[str, Any]) -> Any:
        runs[body["i"]] += 1
        if body["i"] == 0:
            await gate.wait()  # runs on while line 1 meets the budget
        elif body["i"] == 1 and runs[1] == 1:
            raise BudgetExceeded("over", retry_after=1)
        return {"i": body["i"]}

    runner = BatchRunner(store, run_line, lambda: 2, ahead=0)
    await runner.step()
    await asyncio.sleep(0.05)
    gate.set()
    batch = await drive(runner, store)
    assert batch["request_counts"]["completed"] == 3
    assert runs == Counter({0: 1, 1: 2, 2: 1})  # before: line 0 was given back and run twice


async def test_a_failed_write_keeps_its_answers(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job(store, 3)
    runs: Counter[int] = Counter()

    async def run_line(tenant: str, batch_id: str, endpoint: str, body: dict[str, Any]) -> Any:
        runs[body["i"]] += 1
        return {"i": body["i"]}

    runner = BatchRunner(store, run_line, lambda: 3, ahead=0)
    await runner.step()
    await asyncio.sleep(0.05)  # all three answered, not yet written
    real = store.finish_many
    failures = iter([True])

    def flaky(owner: str, answers: Any) -> list[bool]:
        if next(failures, False):
            raise OSError("disk full")
        return real(owner, answers)

    monkeypatch.setattr(store, "finish_many", flaky)
    with pytest.raises(OSError):
        await runner.step()
    batch = await drive(runner, store)
    assert batch["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert runs == Counter({0: 1, 1: 1, 2: 1})


async def test_a_cancel_writes_what_its_lines_had_answered(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job(store, 4)
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def run_line(tenant: str, batch_id: str, endpoint: str, body: dict[str, Any]) -> Any:
        await gate.wait()
        if body["i"] >= 2:
            await asyncio.Event().wait()  # never: these are stopped by the cancel
        return {"i": body["i"]}

    runner = BatchRunner(store, run_line, lambda: 4, ahead=0)
    await runner.step()
    batch = store.batch("b")
    assert batch is not None
    batch["status"] = "cancelling"
    store.update_batch(batch)
    real = store.active_batches

    def active() -> Any:  # lines 0 and 1 answer after the pass's write, before the cancel
        loop.call_soon_threadsafe(gate.set)
        time.sleep(0.1)
        return real()

    monkeypatch.setattr(store, "active_batches", active)
    done = await drive(runner, store)
    assert done["status"] == "cancelled"
    assert done["request_counts"]["completed"] == 2  # before: 0, the answers dropped
    assert [x["custom_id"] for x in lines_of(store, done["output_file_id"])] == ["c0", "c1"]


async def test_a_transient_error_runs_the_line_again(store: SqliteStore) -> None:
    job(store, 2)
    runs: Counter[int] = Counter()

    async def run_line(tenant: str, batch_id: str, endpoint: str, body: dict[str, Any]) -> Any:
        runs[body["i"]] += 1
        if body["i"] == 1 and runs[1] == 1:
            raise Overloaded("busy")
        if body["i"] == 0:  # always overloaded: recorded after the retries
            raise Overloaded("busy")
        return {"i": body["i"]}

    runner = BatchRunner(store, run_line, lambda: 2, ahead=0)
    batch = await drive(runner, store, within=20)
    assert batch["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    assert runs == Counter({0: 4, 1: 2})
    (failed,) = lines_of(store, batch["error_file_id"])
    assert failed["custom_id"] == "c0" and failed["response"]["status_code"] == 503


async def test_a_removed_tenants_batch_fails_and_starts_no_more_lines(
    store: SqliteStore,
) -> None:
    job(store, 50)
    removed = False
    runs = 0

    async def run_line(tenant: str, batch_id: str, endpoint: str, body: dict[str, Any]) -> Any:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.02)
        return {"i": body["i"]}

    runner = BatchRunner(store, run_line, lambda: 2, gone=lambda owner: removed, ahead=4)
    for _ in range(3):
        await runner.step()
        await asyncio.sleep(0.03)
    removed = True
    started = runs
    batch = await drive(runner, store)
    assert batch["status"] == "failed"
    assert batch["errors"]["data"][0]["code"] == "tenant_removed"
    assert batch["errors"]["data"][0]["message"] == GONE
    assert runs <= started + 2  # only what was already running
    assert store.counts("b").total == 50 and store.backlog() == (0, 0)


def test_bad_values_in_the_input_file() -> None:
    def one(line: dict[str, Any]) -> bytes:
        base = {"custom_id": "a", "method": "POST", "url": "/v1/completions"}
        return (json.dumps({**base, **line}, ensure_ascii=False) + "\n").encode()

    # A raw U+2028 inside a JSON string is valid JSONL (lines end at \n).
    text = read_input(one({"body": {"prompt": "a\u2028b\u0085c"}}), "/v1/completions", 10)
    assert text[0][1]["prompt"] == "a\u2028b\u0085c"
    with pytest.raises(InvalidRequest, match=r"Line 1 .*custom_id"):
        read_input(one({"custom_id": "a\x00b", "body": {}}), "/v1/completions", 10)
    # A huge max_tokens is the line's own problem (its error file), never the store's.
    assert Line("b", 0, "a", {"max_tokens": 10**20}).max_tokens == 2**31 - 1
    assert Line("b", 0, "a", {"max_tokens": -5}).max_tokens == 0


def test_a_huge_max_tokens_is_stored(store: SqliteStore) -> None:
    batch = {"id": "b", "object": "batch", "endpoint": "/v1/completions", "status": "in_progress",
             "created_at": int(time.time()), "expires_at": time.time() + 60}  # fmt: skip
    store.create_batch(batch, "t", [Line("b", 0, "a", {"max_tokens": 10**20})])  # before: 500
    assert store.backlog() == (1, 2**31 - 1)


async def test_an_output_file_is_written_and_read_in_chunks(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.batches.store.CHUNK", 300)  # a few lines a chunk
    job(store, 40)

    async def run_line(tenant: str, batch_id: str, endpoint: str, body: dict[str, Any]) -> Any:
        return {"i": body["i"], "pad": "x" * 50}

    batch = await drive(BatchRunner(store, run_line, lambda: 8), store)
    file_id = batch["output_file_id"]
    parts = store.parts(file_id, "t")
    assert parts is not None and parts > 5  # before: one blob, built whole in memory
    assert store.parts(file_id, "other") is None  # another tenant's: no such file
    pieces = [store.part(file_id, i) for i in range(parts)]
    assert all(len(p) <= 300 + 200 for p in pieces)
    got = [json.loads(x) for x in b"".join(pieces).decode().splitlines()]
    assert [x["custom_id"] for x in got] == [f"c{i}" for i in range(40)]
    assert store.file(file_id, "t")["bytes"] == sum(map(len, pieces))  # type: ignore[index]
    assert store.delete_file(file_id, "t") and store.parts(file_id, "t") is None


async def test_one_batch_that_cannot_settle_holds_up_no_other(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job(store, 2)  # "b", created first
    other = {"id": "b2", "object": "batch", "endpoint": "/v1/completions",
             "status": "in_progress", "created_at": int(time.time()) + 1,
             "expires_at": time.time() + 3600}  # fmt: skip
    store.create_batch(other, "t", [Line("b2", 0, "x", {"i": 0})])
    real = store.settle

    def settle(batch: dict[str, Any], expect: str, tenant: str) -> bool:
        if batch["id"] == "b":
            raise OSError("too big for the store")
        return real(batch, expect, tenant)

    monkeypatch.setattr(store, "settle", settle)

    async def run_line(tenant: str, batch_id: str, endpoint: str, body: dict[str, Any]) -> Any:
        return {"i": body["i"]}

    runner = BatchRunner(store, run_line, lambda: 4, ahead=0)
    deadline = time.monotonic() + 10
    while (store.batch("b2") or {})["status"] != "completed":
        await runner.step()
        await asyncio.sleep(0.01)
        assert time.monotonic() < deadline, "b2 was held up behind b"
    assert store.batch("b")["status"] == "in_progress"  # type: ignore[index]
