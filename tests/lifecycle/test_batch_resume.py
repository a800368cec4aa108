"""Batches survive a gateway killed with SIGKILL: started again on the same
state, it takes up the lines it had not answered, and the output file holds
every custom_id exactly once. With a PostgreSQL store, two gateways share
a batch: one killed mid-batch, the other finishes its lines once their
leases run out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from openai.types import Batch

from tests.support import gateway as support
from tests.support.batches import answers, lines_of, submit, wait_for
from tests.support.gateway import MODEL_NAME, Gateway
from tests.support.metrics import scrape, value
from tests.support.postgres import Postgres, start_postgres
from tests.support.wait import until

pytestmark = pytest.mark.engine

LINES = 24
# Two engine places: a batch may fill one (share 0.75), so each gateway runs
# its lines one after another and the kill lands mid-batch.
ENV = {"GATEWAY_MAX_NUM_SEQS": "2"}
BODIES = [
    {"model": MODEL_NAME, "prompt": f"Line {i}", "max_tokens": 64, "ignore_eos": True,
     "temperature": 0}
    for i in range(LINES)
]  # fmt: skip


def _client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)


def _kill_mid_batch(gw: Gateway, answered: Callable[[], float]) -> None:
    """SIGKILL (no drain, no lease given back) once `answered()` (lines
    answered) is above 0; the kill came before the last."""
    try:
        done_before = until(answered, "a line answered", within=120, every=0.05)
    finally:
        gw.proc.kill()
    gw.proc.wait(30)
    assert done_before < LINES


def _completed(client: openai.OpenAI, batch_id: str) -> Callable[[], float]:
    def completed() -> float:
        counts = client.batches.retrieve(batch_id).request_counts
        return counts.completed if counts is not None else 0

    return completed


def _answered_by(gw: Gateway) -> Callable[[], float]:
    """The lines this gateway itself answered (its own counter)."""
    return lambda: value(
        scrape(gw.url), "gateway_batch_lines_total", model=MODEL_NAME, outcome="done"
    )


def _each_line_once(client: openai.OpenAI, batch_id: str) -> None:
    done = wait_for(client, batch_id, "completed", within=240)
    ids = [a["custom_id"] for a in answers(client, done.output_file_id)]
    assert ids == [f"line-{i}" for i in range(LINES)]  # each exactly once, in order


def test_a_batch_resumes_after_sigkill_and_answers_each_line_once(
    model_dir: Path, tmp_path: Path
) -> None:
    args = ("--warmup", "minimal", "--data-dir", str(tmp_path / "state"))
    gw = support.start_gateway(model_dir, tmp_path / "gw1.log", *args, env=ENV)
    client = _client(gw)
    batch = submit(client, lines_of(BODIES))
    _kill_mid_batch(gw, _completed(client, batch.id))

    gw2 = support.start_gateway(model_dir, tmp_path / "gw2.log", *args, env=ENV)
    try:
        _each_line_once(_client(gw2), batch.id)
    finally:
        support.stop_gateway(gw2)


def test_two_gateways_on_postgresql_share_a_batch_and_survive_one_killed(
    model_dir: Path, tmp_path: Path, postgres: Postgres
) -> None:
    env = {**ENV, "GATEWAY_BATCH_STORE": postgres.new_database(), "GATEWAY_BATCH_LEASE": "3"}
    gws = [
        support.spawn_gateway(model_dir, tmp_path / f"gw{i}.log", "--warmup", "minimal", env=env)
        for i in (1, 2)
    ]
    try:
        for gw in gws:
            support.wait_ready(gw)
        first, second = (_client(gw) for gw in gws)
        batch = submit(first, lines_of(BODIES))
        seen = second.batches.retrieve(batch.id)  # made on one replica, seen on the other
        assert seen.request_counts is not None and seen.request_counts.total == LINES
        # killed once it has answered a line of its own (the other runs lines too)
        _kill_mid_batch(gws[0], _answered_by(gws[0]))
        _each_line_once(second, batch.id)
        survivor = _answered_by(gws[1])()
        assert 0 < survivor < LINES  # it shared the work, and finished the rest
    finally:
        for gw in gws:
            if gw.proc.poll() is None:
                support.stop_gateway(gw)


def test_postgresql_down_at_start_stops_only_batches(model_dir: Path, tmp_path: Path) -> None:
    """Started with its PostgreSQL killed: the gateway becomes ready and
    answers completions; batch calls are 503 until the database is back,
    then a batch runs (before: the gateway did not start at all)."""
    pg = start_postgres(tmp_path / "postgres.log")
    try:
        url = pg.new_database()
        pg.kill()
        env = {**ENV, "GATEWAY_BATCH_STORE": url}
        gw = support.start_gateway(model_dir, tmp_path / "gw.log", "--warmup", "minimal", env=env)
        try:
            c = _client(gw)
            r = c.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=4)
            assert r.usage is not None and r.usage.completion_tokens == 4
            with pytest.raises(openai.APIStatusError) as err:
                c.batches.list()
            assert err.value.status_code == 503
            pg.restart()
            batch = submit(c, lines_of(BODIES[:3]))
            done = wait_for(c, batch.id, "completed", within=120)
            assert done.request_counts is not None and done.request_counts.completed == 3
        finally:
            support.stop_gateway(gw)
    finally:
        pg.stop()


def test_two_gateways_on_one_sqlite_file_never_both_write(model_dir: Path, tmp_path: Path) -> None:
    """A rolling update's two pods on one volume: the second gateway serves
    completions but answers batch calls 503 while the first holds the file;
    once the first is gone, the second takes the store (and its batches)."""
    env = {**ENV, "GATEWAY_BATCH_STORE": str(tmp_path / "batches.db")}
    first = support.start_gateway(model_dir, tmp_path / "gw1.log", "--warmup", "minimal", env=env)
    second = None
    try:
        batch = submit(_client(first), lines_of(BODIES[:2]))
        wait_for(_client(first), batch.id, "completed", within=120)
        second = support.start_gateway(
            model_dir, tmp_path / "gw2.log", "--warmup", "minimal", env=env
        )
        c = _client(second)
        assert c.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2).choices
        with pytest.raises(openai.APIStatusError) as err:
            c.batches.retrieve(batch.id)
        assert err.value.status_code == 503
        support.stop_gateway(first)
        seen = until(lambda: _retrieved(c, batch.id), "the second takes the store", within=30)
        assert seen.status == "completed"
    finally:
        for gw in (first, second):
            if gw is not None and gw.proc.poll() is None:
                support.stop_gateway(gw)


def _retrieved(c: openai.OpenAI, batch_id: str) -> Batch | None:
    try:
        return c.batches.retrieve(batch_id)
    except openai.APIStatusError:
        return None
