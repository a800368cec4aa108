"""The Batch API's operations over a real SQLite store: OpenAI's shapes, a
tenant's own ids only, the limits, and a failing store as a 503 that loses
nothing already accepted."""

from __future__ import annotations

import asyncio
import json
import time
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


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_the_in_progress_cap_holds_under_concurrent_creates(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Five creates at once with a cap of 1: one accepted (before: all five,
    each checked the count before any inserted)."""
    store = (
        SqliteStore(tmp_path / "b.db")
        if backend == "sqlite"
        else PostgresStore(request.getfixturevalue("postgres").new_database())
    )
    api = Batches(store, max_file_bytes=1000, max_lines=10, max_active=1)
    f = await api.upload("t1", "in.jsonl", "batch", LINE)
    results = await asyncio.gather(
        *(api.create("t1", f["id"], "/v1/completions", "24h") for _ in range(5)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, dict) for r in results) == 1
    assert all(isinstance(r, RateLimited) for r in results if not isinstance(r, dict))
    assert store.in_progress("t1") == 1
    store.close()


async def test_file_quotas_and_the_expiry_of_input_files(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db")
    api = Batches(store, max_file_bytes=1000, max_lines=10, max_active=5, max_files=2,
                  max_storage=len(LINE) * 2 + 10)  # fmt: skip
    first = await api.upload("t1", "a.jsonl", "batch", LINE)
    await api.upload("t1", "b.jsonl", "batch", LINE)
    with pytest.raises(RateLimited, match="GATEWAY_MAX_BATCH_FILES") as err:
        await api.upload("t1", "c.jsonl", "batch", LINE)
    assert err.value.code == "file_quota_exceeded"
    await api.upload("t2", "c.jsonl", "batch", LINE)  # another tenant's own quota
    await api.delete("t1", first["id"])
    with pytest.raises(RateLimited, match="GATEWAY_MAX_BATCH_FILE_STORAGE"):
        await api.upload("t1", "big.jsonl", "batch", LINE + b"\n" + b" " * 20)
    # Expiry: an old input file goes, unless an unfinished batch reads it.
    used = await api.upload("t3", "used.jsonl", "batch", LINE)
    await api.create("t3", used["id"], "/v1/completions", "24h")
    assert store.expire_files(time.time() + 10) == 2  # t1's and t2's, not t3's
    assert [x["id"] for x in (await api.files("t3"))["data"]] == [used["id"]]
    assert (await api.files("t1"))["data"] == []


async def test_an_upload_is_read_from_its_file_a_chunk_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.batches.filestore.CHUNK", 64)
    store = SqliteStore(tmp_path / "b.db")
    api = Batches(store, max_file_bytes=1000, max_lines=10, max_active=5)
    content = (LINE + b"\n") * 3
    spooled = tmp_path / "upload"
    spooled.write_bytes(content)
    with spooled.open("rb") as source:
        f = await api.upload("t1", "in.jsonl", "batch", source)
    assert f["bytes"] == len(content)
    assert store.parts(f["id"], "t1") == -(-len(content) // 64)  # chunk rows, no blob
    assert await api.content("t1", f["id"]) == content
    with pytest.raises(InvalidRequest, match="larger than 1000"), spooled.open("rb") as source:
        spooled.write_bytes(content * 10)
        await api.upload("t1", "big.jsonl", "batch", source)
    assert [x["id"] for x in (await api.files("t1"))["data"]] == [f["id"]]  # nothing half-kept
    assert store.expire_files(time.time() + 10) == 1  # its chunk rows go with it
    with store._tx() as db:
        assert db.execute("SELECT count(*) FROM file_chunks").fetchall()[0][0] == 0
