"""Tenants without the engine: the file, fair and prioritised admission, the
budget arithmetic, and the quota stores (Redis: a real redis-server)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.completion.admission import Admission, Place
from app.tenancy.budgets import Concurrency, rate_headers, refusal, windows
from app.tenancy.quota import MemoryStore, RedisStore
from app.tenancy.tenants import Tenant, TenantBook, TenantsFileError, parse_tenants
from tests.support.redis import Redis, start_redis

GOOD = """
tenants:
  - name: search
    keys: ["sk-search"]
    tokens_per_minute: 100
    min_priority: 0
    default_priority: 5
  - name: batch
    keys: ["sha256:{digest}"]
    default_priority: 20
    min_priority: 10
    weight: 2
"""


def _good() -> str:
    return GOOD.format(digest=hashlib.sha256(b"sk-batch").hexdigest())


def test_keys_plain_or_digest_find_their_tenant(tmp_path: Path) -> None:
    f = tmp_path / "tenants.yaml"
    f.write_text(_good())
    book = TenantBook(f, [hashlib.sha256(b"sk-plain").digest()])
    search, batch = book.lookup(b"sk-search"), book.lookup(b"sk-batch")
    assert search is not None and search.name == "search" and search.limited
    assert batch is not None and batch.name == "batch" and batch.weight == 2
    plain = book.lookup(b"sk-plain")
    assert plain is not None and plain.name == "default" and not plain.limited
    assert book.lookup(b"sk-nobody") is None
    # Priority: asked and clamped to min_priority, or the default.
    assert (batch.priority(None), batch.priority(0), batch.priority(15)) == (20, 10, 15)
    assert (search.priority(None), search.priority(-3)) == (5, 0)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("tenants:\n  - name: a\n    keys: [k]\n    tokens_per_minute: 0\n",
         "tenants[0] (a).tokens_per_minute"),
        ("tenants:\n  - name: a\n    keys: [k]\n  - name: b\n    keys: [x]\n    weight: -1\n",
         "tenants[1] (b).weight"),
        ("tenants:\n  - name: a\n    keys: [k]\n    colour: red\n", "tenants[0] (a).colour"),
        ("tenants:\n  - name: a\n    keys: [k]\n  - name: b\n    keys: [k]\n",
         "tenants[1] (b).keys"),
        ("tenants:\n  - name: a\n    keys: ['sha256:12']\n", "tenants[0] (a)"),
        ("tenants: [\n", "line"),
    ],
)  # fmt: skip
def test_a_bad_file_is_refused_in_one_line_naming_entry_and_field(text: str, where: str) -> None:
    with pytest.raises(TenantsFileError) as info:
        parse_tenants(text, "t.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("t.yaml: ") and where in message, message


def test_reload_swaps_the_book_or_keeps_the_old_one(tmp_path: Path) -> None:
    f = tmp_path / "tenants.yaml"
    f.write_text(_good())
    book = TenantBook(f)
    f.write_text("tenants:\n  - name: new\n    keys: [sk-new]\n")
    book.reload()
    assert book.lookup(b"sk-search") is None and book.names == ["new"]
    f.write_text("tenants:\n  - name: new\n    keys: []\n")
    with pytest.raises(TenantsFileError, match=r"tenants\[0\] \(new\).keys"):
        book.reload()
    assert book.lookup(b"sk-new") is not None  # the old book stays


# -- admission: priority, fairness, reserve ----------------------------------


def _drain(adm: Admission, places: list[Place]) -> list[Place]:
    """Release running places one at a time; the order waiting ones started."""
    started: list[Place] = []
    pending = [p for p in places if p.queued]
    while pending:
        running = next(p for p in places if p.running)
        running.release()
        for p in list(pending):
            if p.running:
                started.append(p)
                pending.remove(p)
    return started


def test_the_most_urgent_priority_starts_first_then_the_oldest() -> None:
    adm = Admission(max_inflight=1, max_queue=10, max_queued_tokens=10_000)
    holder = adm.enter(1)
    waiting = [adm.enter(1, priority=p) for p in (5, 0, 5, 3)]
    order = _drain(adm, [holder, *waiting])
    assert [waiting.index(p) for p in order] == [1, 3, 0, 2]


def test_a_flooding_tenant_does_not_starve_another() -> None:
    adm = Admission(max_inflight=1, max_queue=100, max_queued_tokens=100_000)
    holder = adm.enter(10, flow="a", cost=10)
    flood = [adm.enter(10, flow="a", cost=10) for _ in range(8)]
    late = [adm.enter(10, flow="b", cost=10) for _ in range(2)]
    order = _drain(adm, [holder, *flood, *late])
    flows = [p.flow for p in order]
    # b came after eight of a's, yet a's backlog does not go first: the two
    # alternate from b's arrival on (FIFO would put b's two last).
    assert [i for i, f in enumerate(flows) if f == "b"] == [1, 3], flows


def test_weights_share_places_in_proportion() -> None:
    adm = Admission(max_inflight=1, max_queue=200, max_queued_tokens=10**6)
    holder = adm.enter(10, flow="heavy", cost=10, weight=3)
    places = [adm.enter(10, flow="heavy", cost=10, weight=3) for _ in range(40)]
    places += [adm.enter(10, flow="light", cost=10, weight=1) for _ in range(40)]
    order = _drain(adm, [holder, *places])[:40]
    heavy = sum(p.flow == "heavy" for p in order)
    assert 28 <= heavy <= 32, heavy  # 3:1 of the first 40


def test_settling_to_real_usage_moves_the_share() -> None:
    adm = Admission(max_inflight=1, max_queue=10, max_queued_tokens=10**6)
    a = adm.enter(10, flow="a", cost=1000)  # charged 1000, used 10
    b_wait = adm.enter(10, flow="b", cost=100)
    a_wait = adm.enter(10, flow="a", cost=100)
    a.used = 10
    a.release()  # settled: a's counter 10 < b's lift; a's next goes first
    assert a_wait.running and not b_wait.running


def test_idle_time_banks_no_credit() -> None:
    adm = Admission(max_inflight=1, max_queue=100, max_queued_tokens=10**6)
    holder = adm.enter(10, flow="a", cost=10)
    busy = [adm.enter(10, flow="a", cost=10) for _ in range(6)]
    order = _drain(adm, [holder, *busy[:3]])  # a served a lot while b was away
    assert len(order) == 3
    b_places = [adm.enter(10, flow="b", cost=10) for _ in range(4)]
    order = _drain(adm, [p for p in [*busy, *b_places] if p.running or p.queued])
    flows = [p.flow for p in order]
    # b is lifted to a's counter on arrival: they alternate, b does not take four in a row.
    assert flows[:4] != ["b"] * 4 and flows.count("b") == 4, flows


def test_the_reserve_keeps_places_for_the_urgent() -> None:
    adm = Admission(
        max_inflight=4, max_queue=10, max_queued_tokens=10**6, reserve=2, reserve_priority=0,
        engine_slots=64,
    )  # fmt: skip
    low = [adm.enter(1, priority=20) for _ in range(3)]
    assert [p.running for p in low] == [True, True, False]  # 4 - 2 general places
    urgent = [adm.enter(1, priority=0) for _ in range(3)]
    assert [p.running for p in urgent] == [True, True, False]
    urgent[0].release()  # the freed place goes to the urgent waiter, not the older low one
    assert urgent[2].running and not low[2].running
    # The reserve counts against the engine's running places when fewer.
    assert Admission(256, 1, 1, reserve=4, engine_slots=64).general_limit == 60


def test_cancelled_waiter_leaves_its_level() -> None:
    async def scenario() -> None:
        adm = Admission(max_inflight=1, max_queue=5, max_queued_tokens=100)
        holder = adm.enter(1)
        gone = adm.enter(1, priority=0, flow="x")
        stays = adm.enter(1, priority=1, flow="y")
        task = asyncio.create_task(gone.wait())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert adm.queued == 1 and not gone.queued
        holder.release()
        assert stays.running and adm.running == 1 and adm.queued == 0

    asyncio.run(scenario())


# -- budgets -------------------------------------------------------------------


def test_windows_headers_and_refusal() -> None:
    t = Tenant("t", b"t", tokens_per_minute=100, requests_per_minute=5, tokens_per_day=1000)
    ws = windows(t, 30, now=120.0 + 15)  # 15 s into a minute
    assert [w.budget for w in ws] == ["tokens_per_minute", "requests_per_minute", "tokens_per_day"]
    assert [w.add for w in ws] == [30, 1, 30] and ws[0].reset == 45
    headers = rate_headers(ws, (30, 1, 30))
    assert headers == {
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "70",
        "x-ratelimit-reset-tokens": "45s",
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "45s",
        "x-ratelimit-budget-tokens": "tokens_per_minute",
        "x-ratelimit-budget-requests": "requests_per_minute",
    }
    day_only = windows(Tenant("d", b"d", tokens_per_day=10), 1, now=3600.0)
    assert rate_headers(day_only, (1,))["x-ratelimit-reset-tokens"] == "23h0m0s"
    err = refusal(ws[0], 90, headers)
    assert err.status == 429 and err.code == "tokens_per_minute_exceeded"
    assert err.headers() is not None and err.headers()["Retry-After"] == "45"
    assert "10 of 100 tokens left" in err.message


def test_concurrency_limit() -> None:
    t = Tenant("c", b"c", max_concurrent=2)
    c = Concurrency()
    c.enter(t)
    c.enter(t)
    with pytest.raises(Exception, match="max_concurrent") as info:
        c.enter(t)
    assert getattr(info.value, "code", None) == "max_concurrent_exceeded"
    c.leave(t)
    c.enter(t)


def _charge_until_refused(store: MemoryStore | RedisStore, tenant: Tenant, tokens: int) -> int:
    async def run() -> int:
        charged = 0
        while True:
            verdict = await store.charge(windows(tenant, tokens, now=1_000_000.0))
            if verdict.refused is not None:
                return charged
            charged += tokens

    return asyncio.run(run())


def test_memory_store_charges_refuses_and_refunds() -> None:
    store = MemoryStore()
    t = Tenant("m", b"m", tokens_per_minute=100)
    assert _charge_until_refused(store, t, 30) == 90

    async def refund_then_charge() -> bool:
        await store.refund(windows(t, 30, 1_000_000.0), 20)  # used 10 of 30
        return (await store.charge(windows(t, 30, 1_000_000.0))).refused is None

    assert asyncio.run(refund_then_charge())  # 70 + 30 fits now


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = start_redis(tmp_path_factory.mktemp("redis") / "redis.log")
    yield server
    server.stop()


def test_two_stores_on_one_redis_hold_one_budget(redis_server: Redis) -> None:
    t = Tenant("fleet", b"f", tokens_per_minute=1000)

    async def both() -> int:
        a, b = RedisStore(redis_server.redis_url), RedisStore(redis_server.redis_url)
        accepted = 0

        async def hammer(store: RedisStore) -> int:
            n = 0
            for _ in range(40):
                v = await store.charge(windows(t, 30, now=2_000_000.0))
                n += v.refused is None
            return n

        counts = await asyncio.gather(hammer(a), hammer(b), hammer(a), hammer(b))
        accepted = sum(counts)
        await a.close()
        await b.close()
        return accepted

    assert asyncio.run(both()) * 30 == 990  # 33 charges of 30 fit in 1000, fleet-wide


def test_redis_gone_serves_on_local_counters_then_comes_back(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "r.log")
    states: list[bool] = []
    t = Tenant("gone", b"g", tokens_per_minute=100)

    async def scenario() -> None:
        store = RedisStore(server.redis_url, on_state=states.append)
        assert (await store.charge(windows(t, 60, 3_000_000.0))).refused is None
        server.stop()
        v = await store.charge(windows(t, 60, 3_000_000.0))
        assert v.refused is None and not store.up  # fail-open: local counters
        v = await store.charge(windows(t, 60, 3_000_000.0))
        assert v.refused == 0  # the local budget holds (60 + 60 > 100)
        closed = RedisStore(server.redis_url, fail_open=False)
        with pytest.raises(Exception, match="quota store is unreachable"):
            await closed.charge(windows(t, 1, 3_000_000.0))
        await store.close()
        await closed.close()

    asyncio.run(scenario())
    assert states == [True, False]


def test_a_flow_with_places_running_is_not_idle() -> None:
    """Its running places' output is charged when they end, so its counter
    lags: lifting it on its next request (as if back from idle) would take
    its share away (bench.tenants saw 40% instead of 50% before this)."""
    adm = Admission(max_inflight=2, max_queue=100, max_queued_tokens=10**6)
    a1 = adm.enter(10, flow="a", cost=10)
    b1 = adm.enter(10, flow="b", cost=10)
    a_waiting = [adm.enter(10, flow="a", cost=10) for _ in range(3)]
    a1.used = 1000  # a's first request was long
    a1.release()
    assert a_waiting[0].running
    b2 = adm.enter(10, flow="b", cost=10)  # b: one running, none waiting
    b1.used = 10
    b1.release()
    assert b2.running and not a_waiting[1].running
