"""The Batch API's operations over a real SQLite store: OpenAI's shapes, a
tenant's own ids only, the limits, and a failing store as a 503 that loses
nothing already accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.batches.backends import PostgresStore, SqliteStore
from app.batches.service import Batches
from app.errors import InvalidRequest, RateLimited, ResourceNotFound, Unavailable
from tests.support.postgres import start_postgres

pytestmark = pytest.mark.anyio

LINE = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/completions",
                   "body": {"prompt": "x"}}).encode()  # fmt: skip


def batches(tmp_path: Path) -> Batches:
    return Batches(SqliteStore(tmp_path / "b.db"), max_file_bytes=1000, max_lines=10, max_active=1)


async def test_create_get_list_cancel_in_openai_shapes(tmp_path: Path) -> None:
    api = batches(tmp_path)
    f = await api.upload("t1", "in.jsonl", "batch", LINE)
    assert (f["object"], f["bytes"], f["purpose"]) == ("file", len(LINE), "batch")
    b = await api.create("t1", f["id"], "/v1/completions", "24h", {"k": "v"})
    assert b["object"] == "batch" and b["status"] == "in_progress"
    assert b["request_counts"] == {"total": 1, "completed": 0, "failed": 0}
    assert b["expires_at"] - b["created_at"] == 24 * 3600 and b["metadata"] == {"k": "v"}
    assert (await api.get("t1", b["id"]))["input_file_id"] == f["id"]
    listed = await api.list("t1", None, 20)
    assert [x["id"] for x in listed["data"]] == [b["id"]] and not listed["has_more"]
    assert (await api.cancel("t1", b["id"]))["status"] == "cancelling"


async def test_limits_and_other_tenants(tmp_path: Path) -> None:
    api = batches(tmp_path)
    with pytest.raises(InvalidRequest):
        await api.upload("t1", "big.jsonl", "batch", b"x" * 1001)
    with pytest.raises(InvalidRequest):
        await api.upload("t1", "in.jsonl", "fine-tune", LINE)
    f = await api.upload("t1", "in.jsonl", "batch", LINE)
    with pytest.raises(ResourceNotFound):
        await api.create("t2", f["id"], "/v1/completions", "24h")
    for window in ("48h", "25h", "tomorrow", "0s", "1d"):
        with pytest.raises(InvalidRequest) as exc:
            await api.create("t1", f["id"], "/v1/completions", window)
        assert exc.value.param == "completion_window"
    await api.create("t1", f["id"], "/v1/completions", "24h")
    with pytest.raises(RateLimited):  # one batch in progress at most here
        await api.create("t1", f["id"], "/v1/completions", "24h")


async def test_a_failing_store_is_a_503_and_keeps_what_it_had(tmp_path: Path) -> None:
    api = batches(tmp_path)
    f = await api.upload("t1", "in.jsonl", "batch", LINE)
    api.store.close()  # the database is gone for this process
    with pytest.raises(Unavailable) as exc:
        await api.files("t1")
    assert int(exc.value.status) == 503
    again = SqliteStore(tmp_path / "b.db")  # what was accepted is still there
    assert again.content(f["id"], "t1") == LINE


async def test_a_lost_database_is_a_503_until_it_is_back(tmp_path: Path) -> None:
    """PostgreSQL killed (every connection cut): calls fail with 503, nothing
    hangs; started again, the same store reconnects and has what it had."""
    pg = start_postgres(tmp_path / "postgres.log")
    try:
        api = Batches(PostgresStore(pg.new_database()), max_file_bytes=1000, max_lines=10,
                      max_active=1)  # fmt: skip
        f = await api.upload("t1", "in.jsonl", "batch", LINE)
        pg.kill()
        for _ in range(2):  # the call that finds the connection lost, and the next
            with pytest.raises(Unavailable) as exc:
                await api.files("t1")
            assert int(exc.value.status) == 503
        pg.restart()
        assert await api.content("t1", f["id"]) == LINE
    finally:
        pg.stop()
