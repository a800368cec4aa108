"""Tenants on the real engine: budgets and their headers (charged, settled,
429), priority clamping and the engine's priority policy, the reserve,
fair queueing, every usage-log ending, per-tenant metrics, SIGHUP reload,
and two gateways holding one budget through a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.batches.lines import BATCH_PRIORITY
from tests.support.batches import answers, lines_of, submit, wait_for
from tests.support.gateway import MODEL_NAME, Gateway, start_gateway, stop_gateway
from tests.support.metrics import scrape
from tests.support.redis import Redis, start_redis
from tests.support.wait import until

TENANTS = """
tenants:
  - name: search
    keys: ["sk-search"]
    tokens_per_minute: 5000
    requests_per_minute: 500
    default_priority: 5
    min_priority: 0
  - name: batch
    keys: ["sk-batch"]
    default_priority: 20
    min_priority: 10
  - name: other
    keys: ["sk-other"]
    default_priority: 20
    min_priority: 10
  - name: tiny
    keys: ["sk-tiny"]
    requests_per_minute: 2
  - name: fleet
    keys: ["sk-fleet"]
    tokens_per_day: 300
  - name: solo
    keys: ["sk-solo"]
    max_concurrent: 1
"""
LATE = """  - name: late
    keys: ["sk-late"]
"""


class Tenanted:
    def __init__(self, gw: Gateway, usage: Path, tenants: Path, redis: Redis):
        self.gw, self.usage, self.tenants, self.redis = gw, usage, tenants, redis
        self.url = gw.url

    def client(self, key: str, url: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{url or self.url}/v1", api_key=key, max_retries=0)

    def aclient(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def lines(self, usage: Path | None = None) -> list[dict[str, Any]]:
        path = usage or self.usage
        text = path.read_text() if path.exists() else ""  # lines come in 0.2 s batches
        return [json.loads(line) for line in text.splitlines() if line]

    def line(
        self, request_id: str, usage: Path | None = None, within: float = 30
    ) -> dict[str, Any]:
        """The usage line of a request (written when its answer is over)."""

        def found() -> list[dict[str, Any]]:
            return [x for x in self.lines(usage) if x["request_id"] == request_id]

        lines = until(found, f"the usage line of {request_id}", within, every=0.05)
        assert len(lines) == 1, lines  # exactly one record per request
        return lines[0]


def _gateway(model_dir: Path, tmp: Path, tenants: Path, redis: Redis, usage: Path) -> Gateway:
    return start_gateway(
        model_dir,
        tmp / f"{usage.stem}.log",
        env={
            "GATEWAY_TENANTS_FILE": str(tenants),
            "GATEWAY_QUOTA_STORE": redis.redis_url,
            "GATEWAY_USAGE_LOG": str(usage),
            "GATEWAY_API_KEYS": "sk-plain",
            "GATEWAY_MAX_INFLIGHT": "2",
            "GATEWAY_PRIORITY_RESERVE": "1",
            "GATEWAY_RESERVE_PRIORITY": "5",
            # Shared by weight among 6 tenants and the plain keys: 4 each.
            "GATEWAY_MAX_QUEUE": "28",
            "GATEWAY_CHAT_TEMPLATE": "mobilellama-v1",
        },
    )


@pytest.fixture(scope="module")
def tenanted(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenanted]:
    tmp = tmp_path_factory.mktemp("tenants")
    tenants = tmp / "tenants.yaml"
    tenants.write_text(TENANTS)
    redis = start_redis(tmp / "redis.log")
    gw = _gateway(model_dir, tmp, tenants, redis, tmp / "usage.jsonl")
    yield Tenanted(gw, tmp / "usage.jsonl", tenants, redis)
    stop_gateway(gw)
    redis.stop()


def _rid(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


def _create(client: openai.OpenAI, rid: str, **kw: Any) -> Any:
    kw.setdefault("prompt", "Hello there")
    kw.setdefault("max_tokens", 5)
    return client.completions.with_raw_response.create(
        model=MODEL_NAME, extra_headers={"x-request-id": rid}, **kw
    )


def _budget_count(redis: Redis, tenant: str, budget: str) -> int:
    r = redis.client()
    return sum(int(r.get(k) or 0) for k in r.keys(f"gw:budget:{tenant}:{budget}:*"))


def _wait(cond: Callable[[], bool], within: float = 30, what: str = "condition") -> None:
    until(cond, what, within, every=0.05)


def test_budget_charged_on_admission_settled_at_the_end_with_openai_headers(
    tenanted: Tenanted,
) -> None:
    before = _budget_count(tenanted.redis, "search", "tokens_per_minute")
    raw = _create(tenanted.client("sk-search"), _rid("b1"), max_tokens=200)
    usage = raw.parse().usage
    charged = usage.prompt_tokens + 200
    h = raw.headers
    assert h["x-ratelimit-limit-tokens"] == "5000" and h["x-ratelimit-limit-requests"] == "500"
    remaining = int(h["x-ratelimit-remaining-tokens"])
    assert remaining == 5000 - before - charged  # charged prompt + max_tokens on admission
    assert h["x-ratelimit-reset-tokens"].endswith("s")
    # Settled to the real usage once the answer is over (fewer tokens than 200
    # unless it ran to the limit).
    used = usage.prompt_tokens + usage.completion_tokens
    _wait(
        lambda: _budget_count(tenanted.redis, "search", "tokens_per_minute") == before + used,
        what="settled to the real usage",
    )
    # Other /v1 answers carry the headers too.
    models = httpx.get(f"{tenanted.url}/v1/models", headers={"Authorization": "Bearer sk-search"})
    assert models.status_code == 200 and "x-ratelimit-remaining-tokens" in models.headers
    # A plain key (no limits): no headers.
    plain = _create(tenanted.client("sk-plain"), _rid("plain"))
    assert "x-ratelimit-limit-tokens" not in plain.headers


def test_beyond_a_budget_429_names_it_with_retry_after(tenanted: Tenanted) -> None:
    # A reservation larger than the whole budget: no retry can fit it, a 400.
    rid = _rid("big")
    with pytest.raises(openai.BadRequestError) as bad:
        _create(tenanted.client("sk-search"), rid, max_tokens=1900, n=3, prompt="Hi")
    assert bad.value.code == "budget_too_small" and "tokens_per_minute" in bad.value.message
    assert "retry-after" not in bad.value.response.headers
    line = tenanted.line(rid)
    assert (line["status"], line["outcome"], line["tenant"]) == (400, "rejected", "search")
    # A request budget: at most two a minute (a window may turn over once meanwhile).
    tiny = tenanted.client("sk-tiny")
    accepted = 0
    for i in range(6):
        try:
            _create(tiny, _rid(f"tiny{i}"))
            accepted += 1
        except openai.RateLimitError as exc:
            assert exc.code == "requests_per_minute_exceeded"
            assert "requests_per_minute" in exc.message
            assert int(exc.response.headers["retry-after"]) >= 1
            assert exc.response.headers["x-ratelimit-limit-requests"] == "2"
            break
    else:
        pytest.fail("requests_per_minute never refused")
    assert 2 <= accepted <= 4


def test_priority_is_clamped_and_the_engine_schedules_by_priority(tenanted: Tenanted) -> None:
    cases = [("sk-batch", 0, 10), ("sk-batch", None, 20), ("sk-batch", 15, 15),
             ("sk-search", 3, 3), ("sk-search", None, 5),
             # a plain key: never above GATEWAY_RESERVE_PRIORITY + 1 (5 + 1)
             ("sk-plain", -4, 6), ("sk-plain", None, 6), ("sk-plain", 9, 9)]  # fmt: skip
    for key, asked, effective in cases:
        rid = _rid("prio")
        extra = {} if asked is None else {"extra_body": {"priority": asked}}
        _create(tenanted.client(key), rid, **extra)
        assert tenanted.line(rid)["priority"] == effective, (key, asked)
    info = httpx.get(
        f"{tenanted.url}/v1/gateway/info", headers={"Authorization": "Bearer sk-plain"}
    ).json()
    assert info["engine"]["engine_args"]["scheduling_policy"] == "priority"


async def _stream_until_first(client: openai.AsyncOpenAI, rid: str, **kw: Any) -> Any:
    stream = await client.completions.create(
        model=MODEL_NAME,
        prompt="Once upon a time",
        max_tokens=1900,
        stream=True,
        extra_body={"ignore_eos": True},
        extra_headers={"x-request-id": rid},
        **kw,
    )
    await stream.__anext__()
    return stream


def _queued(url: str) -> float:
    samples = scrape(url)
    return sum(v for (n, _), v in samples.items() if n == "gateway_admission_queued")


def test_reserve_lets_the_urgent_pass_a_long_low_priority_request(tenanted: Tenanted) -> None:
    async def scenario() -> tuple[str, str, str]:
        batch, search = tenanted.aclient("sk-batch"), tenanted.aclient("sk-search")
        ra, rb, rs = _rid("long"), _rid("queued"), _rid("urgent")
        long = await _stream_until_first(batch, ra)  # holds the one general place
        queued = asyncio.create_task(
            batch.completions.create(
                model=MODEL_NAME, prompt="x", max_tokens=3, extra_headers={"x-request-id": rb}
            )
        )
        await asyncio.to_thread(_wait, lambda: _queued(tenanted.url) == 1, 30, "queued")
        # Priority 5 may take the reserved place: it runs now, past the queue.
        await search.completions.create(
            model=MODEL_NAME, prompt="x", max_tokens=3, extra_headers={"x-request-id": rs}
        )
        assert not queued.done()
        await long.close()  # the client cuts the long stream: its place goes on
        await queued
        return ra, rb, rs

    ra, rb, rs = asyncio.run(scenario())
    urgent, waited, long = tenanted.line(rs), tenanted.line(rb), tenanted.line(ra)
    assert urgent["queue_ms"] == 0 and urgent["outcome"] == "ok"
    assert waited["queue_ms"] > 0 and waited["outcome"] == "ok"
    assert long["outcome"] == "client_gone" and long["status"] == 200
    assert long["completion_tokens"] >= 1 and long["finish_reasons"] == [None]


def test_max_concurrent_refuses_the_second_until_the_first_ends(tenanted: Tenanted) -> None:
    async def scenario() -> None:
        solo = tenanted.aclient("sk-solo")
        first = await _stream_until_first(solo, _rid("solo1"))
        with pytest.raises(openai.RateLimitError) as info:
            await solo.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2)
        assert info.value.code == "max_concurrent_exceeded"
        await first.close()

    asyncio.run(scenario())
    solo = tenanted.client("sk-solo")

    def admitted() -> bool:
        try:
            _create(solo, _rid("solo2"))
        except openai.RateLimitError:
            return False
        return True

    _wait(admitted, what="the place given back")


def test_fair_queueing_and_a_queue_shared_by_weight(tenanted: Tenanted) -> None:
    async def scenario() -> tuple[list[str], list[str], str, dict[str, str]]:
        batch, other = tenanted.aclient("sk-batch"), tenanted.aclient("sk-other")
        holder = await _stream_until_first(batch, _rid("holder"))
        rids: list[str] = []
        tasks = []

        def send(client: openai.AsyncOpenAI, name: str) -> None:
            rid = _rid(name)
            rids.append(rid)
            tasks.append(asyncio.create_task(client.completions.create(
                model=MODEL_NAME, prompt="x", max_tokens=3, extra_headers={"x-request-id": rid}
            )))  # fmt: skip

        for _ in range(4):
            send(batch, "flood")
        await asyncio.to_thread(_wait, lambda: _queued(tenanted.url) == 4, 30, "4 queued")
        # batch holds its share of the queue (28 / 7 weights = 4): one more is
        # refused while other tenants still get in (before: the shared queue
        # took batch's backlog until every tenant got 503).
        over = _rid("over")
        with pytest.raises(openai.RateLimitError) as info:
            await batch.with_options(max_retries=0).completions.create(
                model=MODEL_NAME, prompt="x", max_tokens=3, extra_headers={"x-request-id": over}
            )
        assert info.value.status_code == 429
        assert info.value.code == "queue_share_exceeded"
        headers = dict(info.value.response.headers)
        for _ in range(2):
            send(other, "fair")
        await asyncio.to_thread(_wait, lambda: _queued(tenanted.url) == 6, 30, "6 queued")
        await holder.close()
        await asyncio.gather(*tasks)
        return rids[:4], rids[4:], over, headers

    flood, fair, over, headers = asyncio.run(scenario())
    assert headers["retry-after"] == "1"
    ends = {}
    for rid in flood + fair:
        line = tenanted.line(rid)
        ends[rid] = line["ts"] * 1000 + line["duration_ms"]
    order = sorted(ends, key=ends.__getitem__)  # one place: they ran one after another
    positions = [order.index(r) for r in fair]
    # FIFO would run "other" 5th and 6th; fair shares put both among the first four.
    assert max(positions) <= 3, [("fair" if r in fair else "flood") for r in order]
    line = tenanted.line(over)
    assert (line["status"], line["outcome"], line["tenant"]) == (429, "throttled", "batch")


def test_usage_log_one_line_per_ending_and_never_a_secret(tenanted: Tenanted) -> None:
    search = tenanted.client("sk-search")
    ok = _rid("ok")
    answer = _create(search, ok, prompt="The quick brown fox").parse()
    rid_stream = _rid("stream")
    with search.completions.create(
        model=MODEL_NAME, prompt="abc", max_tokens=4, stream=True,
        stream_options={"include_usage": True}, extra_headers={"x-request-id": rid_stream},
    ) as stream:  # fmt: skip
        chunks = list(stream)
    bad = _rid("bad")
    with pytest.raises(openai.BadRequestError):
        _create(search, bad, temperature=5)
    nokey = _rid("nokey")
    with pytest.raises(openai.AuthenticationError):
        _create(tenanted.client("sk-wrong"), nokey)
    chat = _rid("chat")
    tenanted.client("sk-batch").chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
        extra_headers={"x-request-id": chat},
    )  # fmt: skip

    line = tenanted.line(ok)
    assert line["id"] == answer.id and line["model"] == MODEL_NAME
    assert line["endpoint"] == "/v1/completions" and (line["status"], line["outcome"]) == (
        200,
        "ok",
    )
    assert line["prompt_tokens"] == answer.usage.prompt_tokens
    assert line["completion_tokens"] == answer.usage.completion_tokens
    assert line["finish_reasons"] == [answer.choices[0].finish_reason]
    assert line["ttft_ms"] > 0 and line["duration_ms"] >= line["ttft_ms"]
    assert line["cached_tokens"] == (answer.usage.prompt_tokens_details.cached_tokens or 0)
    streamed = tenanted.line(rid_stream)
    final = chunks[-1].usage
    assert (streamed["status"], streamed["outcome"]) == (200, "ok")
    assert streamed["completion_tokens"] == final.completion_tokens
    assert streamed["id"] == chunks[0].id
    assert (tenanted.line(bad)["status"], tenanted.line(bad)["outcome"]) == (400, "rejected")
    unauth = tenanted.line(nokey)
    assert (unauth["status"], unauth["tenant"], unauth["id"]) == (401, None, None)
    chat_line = tenanted.line(chat)
    assert chat_line["endpoint"] == "/v1/chat/completions" and chat_line["tenant"] == "batch"
    assert chat_line["id"].startswith("chatcmpl-")
    text = tenanted.usage.read_text()
    for secret in ("sk-search", "sk-batch", "sk-wrong", "quick brown fox"):
        assert secret not in text
    keys = set(json.loads(text.splitlines()[0]))
    assert keys == {
        "ts", "request_id", "id", "tenant", "model", "endpoint", "status", "outcome",
        "finish_reasons", "prompt_tokens", "completion_tokens", "cached_tokens", "priority",
        "queue_ms", "ttft_ms", "duration_ms", "batch_id",
    }  # fmt: skip


def test_per_tenant_metrics_agree_with_the_usage_log(tenanted: Tenanted) -> None:
    _create(tenanted.client("sk-batch"), _rid("m"))
    _wait(lambda: bool(tenanted.lines()), what="usage lines")
    time.sleep(0.2)  # the last line is written when its answer is over
    samples = scrape(tenanted.url)

    def metric(name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"model": MODEL_NAME, **labels}.items())))
        assert key in samples, key  # exported, not silently absent
        return samples[key]

    lines = tenanted.lines()
    batch = [x for x in lines if x["tenant"] == "batch"]
    assert metric("gateway_tenant_tokens_total", tenant="batch", kind="completion") == sum(
        x["completion_tokens"] for x in batch
    )
    assert metric("gateway_tenant_requests_total", tenant="batch", outcome="ok") == sum(
        x["outcome"] == "ok" for x in batch
    )
    assert metric("gateway_tenant_requests_total", tenant="search", outcome="rejected") >= 1
    assert metric("gateway_tenant_requests_total", tenant="tiny", outcome="throttled") >= 1
    assert metric("gateway_tenant_throttled_total", tenant="tiny",
                  budget="requests_per_minute") >= 1  # fmt: skip
    assert metric("gateway_quota_store_up") == 1
    assert metric("gateway_admission_wait_seconds_count", priority="20") >= 1


def test_sighup_reloads_the_tenants_file_or_keeps_the_old_one(tenanted: Tenanted) -> None:
    late = tenanted.client("sk-late")
    with pytest.raises(openai.AuthenticationError):
        _create(late, _rid("late0"))
    tenanted.tenants.write_text(TENANTS + LATE)
    tenanted.gw.proc.send_signal(signal.SIGHUP)

    def reloads(result: str) -> float:
        key = ("gateway_tenants_reloads_total", (("model", MODEL_NAME), ("result", result)))
        return scrape(tenanted.url)[key]

    _wait(lambda: reloads("ok") == 1, what="reload")
    rid = _rid("late")
    _create(late, rid)
    assert tenanted.line(rid)["tenant"] == "late"
    tenanted.tenants.write_text(TENANTS + LATE + "    weight: 0\n")
    tenanted.gw.proc.send_signal(signal.SIGHUP)
    _wait(lambda: reloads("refused") == 1, what="refused reload")
    _create(late, _rid("late2"))  # the previous book stays
    assert "tenants[6] (late).weight" in tenanted.gw.logs()
    tenanted.tenants.write_text(TENANTS + LATE)


def test_two_gateways_on_one_redis_hold_one_budget_and_fail_open(
    tenanted: Tenanted, model_dir: Path, tmp_path: Path
) -> None:
    second = _gateway(model_dir, tmp_path, tenanted.tenants, tenanted.redis, tmp_path / "u2.jsonl")
    try:
        clients = [tenanted.client("sk-fleet"), tenanted.client("sk-fleet", second.url)]
        served = 0
        charge = 0
        for i in range(12):
            try:
                raw = _create(clients[i % 2], _rid("fleet"), max_tokens=40,
                              extra_body={"ignore_eos": True})  # fmt: skip
            except openai.RateLimitError as exc:
                assert exc.code == "tokens_per_day_exceeded"
                continue
            served += 1
            charge = raw.parse().usage.prompt_tokens + 40
        # 300 tokens a day, fleet-wide: N gateways do not hold N budgets.
        assert served == 300 // charge, (served, charge)
        # Redis gone: both keep serving on their own counters, and say so.
        tenanted.redis.stop()
        _create(tenanted.client("sk-search", second.url), _rid("open"))
        key = ("gateway_quota_store_up", (("model", MODEL_NAME),))
        assert scrape(second.url)[key] == 0
        assert "unreachable" in second.logs()
    finally:
        stop_gateway(second)


def test_batch_lines_come_in_at_the_batch_priority(tenanted: Tenanted) -> None:
    """A batch line comes in through the same door as an HTTP request, at the
    batch's priority from the start: its usage line and the queue-wait
    metric say so (before: both showed the tenant's online priority, 20)."""
    client = tenanted.client("sk-batch")

    def online_waits() -> float:
        key = ("gateway_admission_wait_seconds_count",
               (("model", MODEL_NAME), ("priority", "20")))  # fmt: skip
        return scrape(tenanted.url)[key]

    before = online_waits()
    body = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 3}
    batch = submit(client, lines_of([body, {**body, "max_tokens": "three"}]))
    done = wait_for(client, batch.id, "completed")
    assert done.request_counts is not None and done.request_counts.failed == 1
    _wait(lambda: len([x for x in tenanted.lines() if x["batch_id"] == batch.id]) == 2,
          what="the lines' usage lines")  # fmt: skip
    ours = [x for x in tenanted.lines() if x["batch_id"] == batch.id]
    assert {x["priority"] for x in ours if x["status"] == 200} == {BATCH_PRIORITY}
    assert online_waits() == before
    # The bad line's error is the one an HTTP request gets for the same body.
    (error,) = answers(client, done.error_file_id)
    bad: Any = "three"
    with pytest.raises(openai.BadRequestError) as online:
        client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=bad)
    message = error["response"]["body"]["error"]["message"]
    assert message == online.value.body["message"]  # type: ignore[index]


def test_a_removed_tenants_batch_fails_and_runs_no_more_lines(tenanted: Tenanted) -> None:
    """A tenant removed from the file (SIGHUP) while its batch runs: the
    batch fails with tenant_removed and no more of its lines run (before:
    the batch went on unrestricted and unbilled, 308 usage lines for 150)."""
    gone = """  - name: leaving
    keys: ["sk-leaving"]
"""
    before = tenanted.tenants.read_text()
    tenanted.tenants.write_text(before + gone)
    tenanted.gw.proc.send_signal(signal.SIGHUP)
    client = tenanted.client("sk-leaving")
    _wait(lambda: _accepted(client), what="the new tenant's key")
    body = {"model": MODEL_NAME, "prompt": "Go", "max_tokens": 64, "ignore_eos": True}
    batch = submit(client, lines_of([{**body, "prompt": f"Go {i}"} for i in range(150)]))
    _wait(lambda: len(_batch_lines(tenanted, batch.id)) >= 2, what="a few lines run")
    tenanted.tenants.write_text(before)
    tenanted.gw.proc.send_signal(signal.SIGHUP)
    # The batch is no one's now: its row in the gateway's store says why.
    _wait(lambda: _stored(tenanted, batch.id)["status"] == "failed", what="the batch failed")
    assert _stored(tenanted, batch.id)["errors"]["data"][0]["code"] == "tenant_removed"
    time.sleep(2)  # lines already running end; none start
    ran = len(_batch_lines(tenanted, batch.id))
    time.sleep(3)
    assert len(_batch_lines(tenanted, batch.id)) == ran < 150
    with pytest.raises(openai.AuthenticationError):
        client.batches.retrieve(batch.id)  # the key is gone with its tenant
    assert tenanted.client("sk-batch").models.list().data  # the gateway serves on


def _accepted(client: openai.OpenAI) -> bool:
    try:
        client.models.list()
        return True
    except openai.AuthenticationError:
        return False


def _stored(tenanted: Tenanted, batch_id: str) -> dict[str, Any]:
    """The batch as the gateway's SQLite store holds it (read-only)."""
    db = tenanted.usage.parent / "usage.state" / "batches.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        (body,) = conn.execute("SELECT body FROM batches WHERE id = ?", (batch_id,)).fetchone()
    return dict(json.loads(body))


def _batch_lines(tenanted: Tenanted, batch_id: str) -> list[dict[str, Any]]:
    return [x for x in tenanted.lines() if x.get("batch_id") == batch_id]
