"""The batch store, on SQLite and on a real PostgreSQL server alike: a job
is accepted whole, lines are leased and answered exactly once, a dead
runner's lines are taken again once its leases run out, and everything
survives the process that wrote it (SIGKILLed)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.batches.backends import open_store
from app.batches.records import Line
from app.batches.store import BatchStore

ROOT = Path(__file__).parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's GATEWAY_BATCH_STORE: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "b.db")
    return str(request.getfixturevalue("postgres").new_database())


@pytest.fixture
def store(where: str) -> Iterator[BatchStore]:
    opened = open_store(where, ROOT / "unused")
    yield opened
    opened.close()


def job(store: BatchStore, n: int, batch_id: str = "batch_1", tenant: str = "a") -> None:
    batch = {"id": batch_id, "status": "in_progress", "created_at": 1, "expires_at": 10**10}
    lines = [Line(batch_id, i, f"c{i}", {"prompt": str(i)}) for i in range(n)]
    store.create_batch(batch, tenant, lines)


def test_lines_are_leased_in_order_and_answered_once(store: BatchStore) -> None:
    job(store, 5)
    mine = store.claim("batch_1", "gw1", 3, lease=60)
    assert [ln.custom_id for ln in mine] == ["c0", "c1", "c2"]
    # held lines are not handed to another runner
    assert [ln.idx for ln in store.claim("batch_1", "gw2", 10, lease=60)] == [3, 4]
    assert store.finish(mine[0], "gw1", "done", {"custom_id": "c0"})
    assert not store.finish(mine[0], "gw1", "done", {"custom_id": "c0"})  # not twice
    assert not store.finish(mine[1], "gw2", "done", {})  # not by one without the lease
    assert store.counts("batch_1").completed == 1


def test_a_dead_runners_lines_are_taken_again_after_its_lease(store: BatchStore) -> None:
    job(store, 2)
    dead = store.claim("batch_1", "gw1", 2, lease=0.2)
    assert store.claim("batch_1", "gw2", 2, lease=60) == []
    time.sleep(0.3)
    again = store.claim("batch_1", "gw2", 2, lease=60)
    assert [ln.idx for ln in again] == [0, 1]
    assert not store.finish(dead[0], "gw1", "done", {})  # the dead one's late answer is dropped
    assert store.finish(again[0], "gw2", "done", {"i": 0})
    assert store.results("batch_1", "done") == [{"i": 0}]


def test_a_job_survives_a_killed_process(where: str) -> None:
    """A child process creates a job, answers one line, holds another and is
    SIGKILLed; a new store on the same file (or database) sees it all."""
    code = f"""
import os, signal, pathlib
from app.batches.records import Line
from app.batches.backends import open_store
s = open_store({where!r}, pathlib.Path("unused"))
s.create_batch({{"id": "b", "status": "in_progress", "created_at": 1, "expires_at": 10**10}},
               "a", [Line("b", i, f"c{{i}}", {{}}) for i in range(3)])
first, second = s.claim("b", "gw1", 2, lease=0.5)
s.finish(first, "gw1", "done", {{"custom_id": "c0"}})
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT)
    assert proc.returncode == -9
    store = open_store(where, ROOT / "unused")
    assert store.batch("b") is not None and store.batch("b", "other") is None
    assert store.counts("b").completed == 1
    time.sleep(0.6)  # the killed runner's lease runs out
    assert [ln.idx for ln in store.claim("b", "gw2", 5, lease=60)] == [1, 2]


def test_files_belong_to_their_tenant(store: BatchStore) -> None:
    meta = {"id": "file-1", "purpose": "batch", "filename": "in.jsonl", "bytes": 3,
            "created_at": 5}  # fmt: skip
    store.put_file(meta, "a", b"{}\n")
    assert store.content("file-1", "a") == b"{}\n"
    assert store.content("file-1", "b") is None and store.file("file-1", "b") is None
    assert [f["id"] for f in store.files("a")] == ["file-1"] and store.files("b") == []
    assert not store.delete_file("file-1", "b") and store.delete_file("file-1", "a")
    assert store.file("file-1", "a") is None


def test_batches_list_newest_first_after_a_cursor(store: BatchStore) -> None:
    for i in range(4):
        batch = {"id": f"batch_{i}", "status": "in_progress", "created_at": i, "expires_at": 9}
        store.create_batch(batch, "a", [])
    assert [b["id"] for b in store.batches("a", None, 2)] == ["batch_3", "batch_2"]
    assert [b["id"] for b in store.batches("a", "batch_2", 10)] == ["batch_1", "batch_0"]
    assert store.in_progress("a") == 4 and store.in_progress("b") == 0


def test_a_restarted_gateway_takes_a_dead_ones_lines_at_once(store: BatchStore) -> None:
    job(store, 3)
    held = store.claim("batch_1", "dead", 2, lease=3600)
    assert store.finish(held[0], "dead", "done", {"i": 0})
    if not store.single_writer:  # a fleet's other replicas may be alive: leases run out
        assert store.release_all() == 0
        assert [ln.idx for ln in store.claim("batch_1", "new", 5, lease=60)] == [2]
        return
    assert store.release_all() == 1  # the one it held unanswered
    assert [ln.idx for ln in store.claim("batch_1", "new", 5, lease=60)] == [1, 2]


def test_finished_batches_go_after_their_retention_with_their_files(store: BatchStore) -> None:
    job(store, 1, "old")
    job(store, 1, "running")
    meta = {"id": "file-out", "purpose": "batch_output", "filename": "o.jsonl", "bytes": 1,
            "created_at": 1}  # fmt: skip
    store.put_file(meta, "a", b"x")
    old = store.batch("old")
    assert old is not None
    old.update(status="completed", completed_at=100, output_file_id="file-out")
    assert store.update_batch(old)
    assert store.purge(before=99) == 0  # not yet
    assert store.purge(before=101) == 1  # the finished one; never a running one
    assert store.batch("old") is None and store.file("file-out", "a") is None
    assert store.batch("running") is not None and store.counts("running").total == 1


def test_two_runners_claiming_at_once_never_share_a_line(where: str, store: BatchStore) -> None:
    """Two connections (two replicas) claim from one batch in parallel
    threads: every line goes to exactly one of them."""
    job(store, 200)
    other = open_store(where, ROOT / "unused")
    taken: dict[str, list[int]] = {"gw1": [], "gw2": []}

    def take(runner: BatchStore, name: str) -> None:
        while lines := runner.claim("batch_1", name, 3, lease=60):
            taken[name] += [ln.idx for ln in lines]
            time.sleep(0.001)  # the other runner gets its turn

    threads = [
        threading.Thread(target=take, args=(s, n)) for s, n in ((store, "gw1"), (other, "gw2"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert sorted(taken["gw1"] + taken["gw2"]) == list(range(200))  # each once
    assert taken["gw1"] and taken["gw2"]  # both took part
