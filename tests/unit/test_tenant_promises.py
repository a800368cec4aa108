"""The tenancy review's findings (issue: tenants that keep every promise),
each a check that failed on the code before the fix: keys always checked
with a tenants file, fair shares that hold for newcomers and long outputs,
the queue shared by weight, charges that remember their store and count
once across Redis timeouts (a real redis-server, paused with SIGSTOP), a
reservation no retry can fit, bad files in one line (fuzzed), the priority
floor, the usage log, the headers, and the smaller ones."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import subprocess
import sys
from collections.abc import Hashable
from pathlib import Path
from typing import cast

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from app.completion.admission import Admission, Place
from app.config import Settings
from app.errors import InvalidRequest, RateLimited
from app.observability.record import RequestRecord
from app.tenancy.assembly import build_tenancy
from app.tenancy.budgets import rate_headers, too_large, windows
from app.tenancy.ledger import Ledger, UsageLog
from app.tenancy.quota import _CHARGE, MemoryStore, RedisStore
from app.tenancy.tenants import Tenant, TenantBook, TenantsFileError, parse_tenants
from testkit.fake_engine import FakeEngine
from tests.support.gateway import ROOT
from tests.support.inprocess import serve
from tests.support.redis import start_redis
from tests.support.wait import until
from tests.unit.test_pipeline import letters

TWO = """
tenants:
  - name: a
    keys: ["sk-a"]
    tokens_per_minute: 1000
  - name: b
    keys: ["sk-b"]
    weight: 3
"""

# -- 1. an empty tenants file never opens the door ----------------------------


def test_an_empty_tenants_file_needs_keys_and_a_reload_lets_tenants_in(tmp_path: Path) -> None:
    f = tmp_path / "tenants.yaml"
    f.write_text("tenants: []\n")

    async def scenario() -> None:
        async with serve(FakeEngine(letters), tenants_file=f) as c:
            assert (await c.get("/v1/models")).status_code == 401  # was 200: no check at all
            f.write_text(TWO)
            c._transport.app.state.tenancy.hangup()  # type: ignore[attr-defined]
            ok = await c.get("/v1/models", headers={"Authorization": "Bearer sk-a"})
            assert ok.status_code == 200
            assert (await c.get("/v1/models")).status_code == 401

    asyncio.run(scenario())


# -- 2, 3. lifts whichever way a flow enters; output charged per step ---------


def vt(adm: Admission, flow: Hashable) -> float:
    return adm._vt.get(flow, 0.0)


def test_a_newcomer_on_a_free_place_is_lifted_and_does_not_take_every_place() -> None:
    adm = Admission(2, 200, 10**6)
    old = adm.enter(10, flow="old", cost=10)
    adm._vt["old"] = 10_000.0  # days of service
    newcomer = adm.enter(10, flow="new", cost=10)  # a free place: starts at once
    assert newcomer.running
    assert vt(adm, "new") >= 10_000.0  # before: 10, so it then took 80 starts in a row
    backlog = [adm.enter(10, flow="old", cost=10) for _ in range(5)]
    backlog += [adm.enter(10, flow="new", cost=10) for _ in range(5)]
    old.release()
    newcomer.release()
    starts: list[Place] = []
    for _ in range(6):
        running = [p for p in backlog if p.running and p not in starts]
        starts += running
        for p in running:
            p.release()
    flows = [p.flow for p in starts[:4]]
    assert flows.count("old") >= 1, flows


def test_output_is_charged_per_step_while_it_runs() -> None:
    adm = Admission(2, 10, 10**6)
    a1 = adm.enter(10, flow="a", cost=10)  # long output
    b1 = adm.enter(10, flow="b", cost=10)
    a2 = adm.enter(10, flow="a", cost=10)
    b2 = adm.enter(10, flow="b", cost=10)
    for _ in range(50):
        adm.step()
    # b was lifted to a's 10 on entering, then charged its prompt.
    assert vt(adm, "a") == 60.0 and vt(adm, "b") == 70.0
    b1.used = 15  # b's ended early: settled to 15 (charged 60)
    b1.release()
    # a has generated 50 tokens and counts them now: b's next goes first
    # (before: a's counter still 10 until it ended, so a2 took the place).
    assert b2.running and not a2.running
    a1.used = 10 + 55
    a1.release()  # settled: 60 charged, 65 used
    assert a2.running and vt(adm, "a") == 65.0 + 10  # a2's prompt


def _simulate(
    weights: list[float], prompts: list[int], outputs: list[int], places: int, steps: int
) -> tuple[list[int], float]:
    """Backlogged flows (three requests always waiting each) on an engine of
    `places`, one output token per running place per step: tokens served
    per flow after a warm-up, and the largest counter spread seen."""
    adm = Admission(places, 10_000, 10**9)
    left: dict[Place, int] = {}  # running place -> output tokens still to come
    waiting: list[Place] = []
    served = [0] * len(weights)
    spread = 0.0

    def pick_up() -> None:
        for p in [p for p in waiting if p.running]:
            waiting.remove(p)
            left[p] = outputs[cast(int, p.flow)]

    def top_up() -> None:
        for f, w in enumerate(weights):
            while adm._waiting(f) < 3:
                p = adm.enter(prompts[f], flow=f, weight=w)
                if p.running:
                    left[p] = outputs[f]
                else:
                    waiting.append(p)

    top_up()
    warm = steps // 5
    for step in range(steps):
        adm.step()
        counting = step >= warm
        for p in list(left):
            f: int = p.flow  # type: ignore[assignment]
            served[f] += counting
            left[p] -= 1
            if left[p] == 0:
                del left[p]
                p.used = prompts[f] + outputs[f]
                served[f] += prompts[f] * counting
                p.release()
        pick_up()
        top_up()
        if counting:
            counters = [vt(adm, f) for f in range(len(weights))]
            spread = max(spread, max(counters) - min(counters))
    return served, spread


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.5, 1.0, 2.0, 3.0]),
            st.integers(1, 120),
            st.integers(1, 160),
        ),
        min_size=2,
        max_size=3,
    ),
    st.integers(1, 4),
)
def test_backlogged_tenants_get_their_weights_share(
    flows: list[tuple[float, int, int]], places: int
) -> None:
    """For any two or three backlogged tenants with their own prompt and
    output lengths and weights, served tokens (prompt and output) follow the
    weights within 10%, and their counters stay within a bound: one request's
    weighted cost (largest prompt + output over the smallest weight) twice,
    plus what the places running at once add (VTC's bound, Sheng et al.)."""
    weights = [w for w, _, _ in flows]
    prompts = [p for _, p, _ in flows]
    outputs = [o for _, _, o in flows]
    served, spread = _simulate(weights, prompts, outputs, places, steps=6000)
    total = sum(served)
    for f, w in enumerate(weights):
        due = w / sum(weights)
        assert abs(served[f] / total - due) <= 0.1 * due + 0.01, (served, weights)
    bound = 2 * max(p + o for p, o in zip(prompts, outputs, strict=True)) / min(weights)
    assert spread <= bound * (places + 1), (spread, bound)


# -- 4. the queue shared by weight --------------------------------------------


def test_a_tenant_over_its_queue_share_is_refused_before_one_under_it() -> None:
    adm = Admission(1, 8, 10**6)
    adm.enter(1, flow="a", share=0.5)  # running
    for _ in range(4):
        adm.enter(1, flow="a", share=0.5)  # its share: 4 of 8 waiting
    with pytest.raises(RateLimited) as refused:
        adm.enter(1, flow="a", share=0.5)
    assert refused.value.code == "queue_share_exceeded" and refused.value.retry_after == 1
    assert refused.value.message == (
        "This tenant has 4 requests waiting, its share of the queue (by weight); "
        "retry when one starts."
    )
    assert adm.enter(1, flow="b", share=0.5).queued  # before: the queue took a's too
    assert adm.enter(1, flow=None).queued  # no share (no tenants): the whole queue
    # a share too small for one place of the queue still has one, not more
    tiny = Admission(1, 8, 10**6)
    tiny.enter(1, flow="c", share=0.01)  # running
    assert tiny.enter(1, flow="c", share=0.01).queued
    with pytest.raises(RateLimited):
        tiny.enter(1, flow="c", share=0.01)


def test_shares_follow_the_files_weights_and_the_plain_keys(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(TWO)
    book = TenantBook(f, [hashlib.sha256(b"sk-plain").digest()])
    a, b, plain = (book.lookup(k) for k in (b"sk-a", b"sk-b", b"sk-plain"))
    assert a is not None and b is not None and plain is not None
    assert (a.share, b.share, plain.share) == (0.2, 0.6, 0.2)
    assert TenantBook(None, [hashlib.sha256(b"k").digest()]).lookup(b"k").share is None  # type: ignore[union-attr]


# -- 5, 6. a charge remembers its store; Redis timeouts count once ------------

T = Tenant("fleet", b"f", tokens_per_minute=10_000, requests_per_minute=1000)
NOW = 4_000_000.0


def _count(server_client: object, budget: str) -> int:
    key = f"gw:budget:fleet:{budget}:{int(NOW // 60) * 60}"
    return int(server_client.get(key) or 0)  # type: ignore[attr-defined]


def test_a_local_charge_is_refunded_locally_and_a_shared_one_in_redis(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "r.log")

    async def scenario() -> None:
        store = RedisStore(server.redis_url)
        shared = await store.charge(windows(T, 4000, NOW), "c1")
        assert not shared.local
        server.proc.send_signal(signal.SIGSTOP)  # away: the next charge is local
        try:
            local = await store.charge(windows(T, 5001, NOW), "c2")
            assert local.local and not store.up
        finally:
            server.proc.send_signal(signal.SIGCONT)
        store._retry_at = 0.0
        await store.charge(windows(T, 1, NOW), "c3")  # back: reconciles
        await until_async(lambda: not store.pending)
        # The local charge's refund goes to the local counters, not Redis.
        await store.refund(windows(T, 5001, NOW), 5000, charge_id="c2", local=True)
        assert _count(server.client(), "tokens_per_minute") == 4001  # before: 4001 - 5000 -> 0
        await store.refund(windows(T, 4000, NOW), 3000, charge_id="c1")
        assert _count(server.client(), "tokens_per_minute") == 1001
        await store.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


async def until_async(check: object, within: float = 30) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not check():  # type: ignore[operator]
        assert loop.time() < end, "not within time"
        await asyncio.sleep(0.05)


def test_a_charge_answered_after_the_timeout_counts_once(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "r.log")

    async def scenario() -> None:
        store = RedisStore(server.redis_url, timeout=0.3)
        server.proc.send_signal(signal.SIGSTOP)  # the script reaches Redis, runs later
        try:
            v = await store.charge(windows(T, 700, NOW), "late")
            assert v.local and v.refused is None  # charged locally (fail-open)
            # A refund of a shared charge that times out is kept, not dropped.
        finally:
            server.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.5)  # Redis runs what was sent while it was stopped
        store._retry_at = 0.0
        assert (await store.charge(windows(T, 10, NOW), "next")).refused is None
        await until_async(lambda: not store.pending)
        # Only "next" counts in Redis: the late script was cancelled there
        # (before: 710, and the 700 stayed to the window's end).
        assert _count(server.client(), "tokens_per_minute") == 10
        assert _count(server.client(), "requests_per_minute") == 1

        # A refund that times out is retried once Redis answers, and counts once.
        server.proc.send_signal(signal.SIGSTOP)
        try:
            await store.refund(windows(T, 10, NOW), 8, charge_id="next")
            assert store.pending
        finally:
            server.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.5)
        store._retry_at = 0.0
        await store.charge(windows(T, 1, NOW), "third")
        await until_async(lambda: not store.pending)
        assert _count(server.client(), "tokens_per_minute") == 2 + 1  # 10 - 8, + 1
        await store.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_the_charge_script_sets_a_windows_life_once_without_redis_7_syntax(
    tmp_path: Path,
) -> None:
    assert "'NX'" not in _CHARGE  # EXPIRE ... NX is Redis 7 only
    server = start_redis(tmp_path / "r.log")

    async def scenario() -> None:
        store = RedisStore(server.redis_url)
        ws = windows(T, 1, NOW)
        await store.charge(ws, "x1")
        client = server.client()
        key = ws[0].key
        client.expire(key, 5)
        await store.charge(ws, "x2")  # a later charge keeps the window's end
        assert 0 < client.ttl(key) <= 5
        await store.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


# -- 7. a reservation larger than the whole budget ----------------------------


def test_a_request_larger_than_the_whole_budget_is_a_400() -> None:
    t = Tenant("small", b"s", tokens_per_minute=100)
    with pytest.raises(InvalidRequest) as bad:
        too_large(windows(t, 2048, NOW))
    assert bad.value.status == 400 and bad.value.param == "max_tokens"
    assert bad.value.code == "budget_too_small"
    assert bad.value.message == (
        "This request reserves 2048 tokens (its prompt plus max_tokens for every choice), "
        "more than the whole tokens_per_minute budget (100): no retry can fit it. Send a "
        "smaller max_tokens (or n, or prompt)."
    )
    too_large(windows(t, 100, NOW))  # exactly the budget: may wait for the window


# -- 8. bad tenants files: one line, never a traceback ------------------------

_yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["tenants", "name", "keys", "weight", "tokens_per_minute", "x"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_yaml_values)
def test_any_yaml_is_a_book_or_one_line(value: object) -> None:
    text = yaml.safe_dump(value)
    try:
        parse_tenants(text, "t.yaml")
    except TenantsFileError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("t.yaml: ")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64))
def test_any_bytes_are_a_book_or_one_line(data: bytes | str) -> None:
    try:
        parse_tenants(data, "t.yaml")
    except TenantsFileError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize(
    "data",
    [
        b"tenants:\n  - name: a\n    keys: [k]\n    weight: 2024-13-45\n",  # a bad timestamp
        b"tenants: " + b"[" * 5000 + b"]" * 5000 + b"\n",  # deep nesting
        b"tenants: [\xff\xfe]\n",  # not UTF-8
        b"tenants:\n  - name: a\n    keys: [k]\n    weight: 1e-320\n",  # a weight that NaNs
    ],
)
def test_bad_files_that_escaped_are_one_line_at_start_and_kept_out_on_reload(
    data: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "tenants.yaml"
    f.write_bytes(data)
    run = subprocess.run(
        [sys.executable, "-m", "app", "--tenants-file", str(f), "--model", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    f.write_text(TWO)
    registry = CollectorRegistry()
    tenancy = build_tenancy(Settings(tenants_file=f), registry)
    f.write_bytes(data)
    with caplog.at_level(logging.ERROR):
        tenancy.hangup()  # before: an "Exception in callback" for some
    assert tenancy.book.lookup(b"sk-a") is not None  # the old book stays
    refused = registry.get_sample_value(
        "gateway_tenants_reloads_total",
        {"model": tenancy.metrics.model, "result": "refused"},  # type: ignore[union-attr]
    )
    assert refused == 1.0
    assert len([r for r in caplog.records if "not reloaded" in r.getMessage()]) == 1


# -- 9. the reserve is not everyone's ------------------------------------------


def test_unnamed_keys_and_anonymous_callers_stay_above_the_reserve(tmp_path: Path) -> None:
    s = Settings(priority_reserve=2, reserve_priority=0)
    assert s.priority_floor == 1
    assert Settings(default_min_priority=-5).priority_floor == -5
    book = TenantBook(None, [hashlib.sha256(b"k").digest()], floor=s.priority_floor)
    plain = book.lookup(b"k")
    assert plain is not None
    assert (plain.priority(None), plain.priority(-10), plain.priority(7)) == (1, 1, 7)

    async def anonymous() -> int:
        engine = FakeEngine(letters)
        async with serve(engine, priority_reserve=1) as c:
            r = await c.post(
                "/v1/completions",
                json={"model": "fake", "prompt": "hi", "max_tokens": 1, "priority": -10},
            )
            assert r.status_code == 200, r.text
            return engine.priorities[-1]

    assert asyncio.run(anonymous()) == 1  # before: -10, ahead of every urgent tenant


# -- 10. the usage log ---------------------------------------------------------


def test_the_usage_log_reopens_after_a_rename_and_counts_a_failing_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "usage.jsonl"
    log = UsageLog(str(path))
    log.write({"n": 1})
    until(lambda: path.exists() and path.read_text().count("\n") == 1, "the first line")
    path.rename(tmp_path / "usage.jsonl.1")  # logrotate
    log.reopen()
    log.write({"n": 2})
    log.close()
    assert path.read_text() == '{"n":2}\n'  # before: written to the rotated file
    errors: list[int] = []
    with caplog.at_level(logging.ERROR):
        full = UsageLog("/dev/full", on_error=lambda: errors.append(1))
        for i in range(5):
            full.write({"n": i})
        full.close()
    assert len(errors) == 5
    assert len([r for r in caplog.records if "usage log" in r.getMessage()]) == 1


def test_a_431_before_the_app_is_one_usage_line(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    log = tmp_path / "u.jsonl"
    tenancy = build_tenancy(Settings(usage_log=str(log)), registry)
    assert tenancy.ledger is not None
    tenancy.ledger.refused_early(431, "rejected")
    asyncio.run(tenancy.ledger.close())
    line = yaml.safe_load(log.read_text())
    assert line["status"] == 431 and line["outcome"] == "rejected"


# -- 11. headers ---------------------------------------------------------------


def test_headers_name_the_binding_budget_and_are_recomputed_from_now() -> None:
    t = Tenant("h", b"h", tokens_per_minute=1000, tokens_per_day=5000)
    ws = windows(t, 10, NOW)
    headers = rate_headers(ws, (100, 4990))  # the day is nearly spent
    assert headers["x-ratelimit-budget-tokens"] == "tokens_per_day"
    assert headers["x-ratelimit-remaining-tokens"] == "10"  # before: the minute's 900
    ledger = Ledger(_metrics(), MemoryStore(), None, ["h"], [0])
    ledger.last_counts["h"] = (windows(t, 10, NOW - 3 * 86_400), (999, 4999))  # days old
    now = ledger.headers_now(t)
    assert now["x-ratelimit-remaining-tokens"] == "1000"  # a new window: all of it
    assert (
        now["x-ratelimit-reset-tokens"].endswith("s") and "h" not in now["x-ratelimit-reset-tokens"]
    )  # the minute's reset, not hours


def _metrics():  # type: ignore[no-untyped-def]
    from app.observability.tenant_metrics import TenantMetrics

    return TenantMetrics(CollectorRegistry(), "m")


# -- 12. the smaller ones ------------------------------------------------------


def test_a_refused_request_gives_its_request_back_and_labels_stay_bounded() -> None:
    t = Tenant("r", b"r", requests_per_minute=1, named=True)
    ledger = Ledger(_metrics(), MemoryStore(), None, ["r"], [0])

    async def scenario() -> None:
        record = RequestRecord("/v1/completions", "id1")
        await ledger.charge(record, t, 5)
        record.prepared(
            "id1", "m", 0, 5, requested_model=None, truncated_tokens=0,
            max_tokens=4, temperature=None, top_p=None,
        )  # fmt: skip
        from app.errors import Overloaded

        record.rejected(Overloaded("full"))
        ledger.finish(record, 503)  # a 503: the request is given back
        again = RequestRecord("/v1/completions", "id2")
        await ledger.charge(again, t, 5)  # before: 429, the minute's request spent

    asyncio.run(scenario())
    # A tenant a reload removed keeps its own label.
    ledger.set_tenants([], [0])
    assert ledger.label(t) == "r"


def test_a_weight_too_small_to_count_is_refused() -> None:
    with pytest.raises(TenantsFileError, match="weight"):
        parse_tenants("tenants:\n  - name: a\n    keys: [k]\n    weight: 1e-320\n")
