"""Admission places: decided at once, handed on in arrival order, never lost.

The rules of each decision (start, queue, refuse, lift, reserve) follow the first tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Hashable

import pytest

from app.completion.admission import Admission, Place
from app.errors import Overloaded


def test_places_run_queue_and_refuse_in_order() -> None:
    async def scenario() -> None:
        adm = Admission(max_inflight=2, max_queue=2, max_queued_tokens=100)
        a, b = adm.enter(10), adm.enter(10)
        assert a.running and b.running
        c, d = adm.enter(10), adm.enter(10)
        assert c.queued and d.queued and (adm.queued, adm.queued_tokens) == (2, 20)
        with pytest.raises(Overloaded):
            adm.enter(10)
        waits = [asyncio.create_task(c.wait()), asyncio.create_task(d.wait())]
        await asyncio.sleep(0)
        a.release()
        a.release()  # idempotent: frees one place only
        await asyncio.sleep(0)
        assert waits[0].done() and not waits[1].done()  # the oldest first
        assert c.running and adm.running == 2 and adm.queued == 1
        b.release()
        await asyncio.gather(*waits)
        c.release()
        d.release()
        assert (adm.running, adm.queued, adm.queued_tokens) == (0, 0, 0)

    asyncio.run(scenario())


def test_queued_tokens_bound_refuses() -> None:
    adm = Admission(max_inflight=1, max_queue=10, max_queued_tokens=15)
    adm.enter(1000)  # a running place is not bounded by queued tokens
    adm.enter(10)
    with pytest.raises(Overloaded, match="prompt tokens"):
        adm.enter(10)


def test_cancelled_waiters_do_not_lose_places() -> None:
    async def scenario() -> None:
        adm = Admission(max_inflight=1, max_queue=3, max_queued_tokens=100)
        holder = adm.enter(1)
        gone, handed, last = adm.enter(1), adm.enter(1), adm.enter(1)
        t_gone = asyncio.create_task(gone.wait())
        t_handed = asyncio.create_task(handed.wait())
        t_last = asyncio.create_task(last.wait())
        await asyncio.sleep(0)
        t_gone.cancel()  # left the queue while waiting
        await asyncio.gather(t_gone, return_exceptions=True)
        gone.release()
        assert adm.queued == 2
        holder.release()  # handed to `handed`, which is cancelled before it resumes
        t_handed.cancel()
        await asyncio.gather(t_handed, return_exceptions=True)
        handed.release()
        await asyncio.wait_for(t_last, 1)  # the place went on to the next waiter
        assert last.running and adm.running == 1
        last.release()
        assert (adm.running, adm.queued, adm.queued_tokens) == (0, 0, 0)

    asyncio.run(scenario())


# -- the rules, decision by decision ------------------------------------------


def check(adm: Admission, places: list[Place]) -> None:
    """Every count agrees with the places, and no waiting place could start."""
    running = [p for p in places if p.running]
    queued = [p for p in places if p.queued]
    assert adm.running == len(running)
    assert (adm.queued, adm.queued_tokens) == (len(queued), sum(p._tokens for p in queued))
    assert adm._running == Counter(p.flow for p in running)
    in_levels = [p for level in adm._levels.values() for q in level.values() for p in q]
    assert sorted(map(id, in_levels)) == sorted(map(id, queued))
    assert all(level and all(level.values()) for level in adm._levels.values())  # none empty
    for priority, level in adm._levels.items():
        for flow, waiting in level.items():
            assert all(p.priority == priority and p.flow == flow for p in waiting)
        assert adm.running >= adm._limit(priority)  # work-conserving


@pytest.mark.parametrize("seed", range(40))
def test_the_books_balance_after_any_sequence(seed: int) -> None:
    rng = random.Random(seed)
    adm = Admission(
        max_inflight=rng.randint(1, 4),
        max_queue=rng.randint(0, 6),
        max_queued_tokens=rng.randint(5, 60),
        reserve=rng.choice([0, 0, 1, 2]),
        reserve_priority=rng.choice([0, 5]),
        engine_slots=rng.choice([None, 2, 8]),
    )
    places: list[Place] = []
    for _ in range(60):
        op = rng.random()
        if op < 0.55 or not places:
            with contextlib.suppress(Overloaded):
                places.append(
                    adm.enter(
                        rng.randint(1, 10),
                        priority=rng.choice([0, 5, 10]),
                        flow=rng.choice(["a", "b", "c", None]),
                        cost=rng.choice([None, 0, 7, 30]),
                        weight=rng.choice([0.5, 1.0, 3.0]),
                    )
                )
        else:
            place = rng.choice(places)
            place.used = rng.choice([None, 0, 12])
            place.release()
            if rng.random() < 0.3:
                place.release()  # a second release changes nothing
            places.remove(place)
            assert not place.running and not place.queued
        check(adm, places)
    for place in places:
        place.release()
    check(adm, [])
    assert (adm.running, adm.queued, adm.queued_tokens, adm._running) == (0, 0, 0, {})


def test_defaults_and_messages() -> None:
    adm = Admission(max_inflight=1, max_queue=1, max_queued_tokens=100)
    first = adm.enter(10)
    assert (first.priority, first.flow, first.weight, first.cost) == (0, None, 1.0, 10)
    adm.enter(10)
    with pytest.raises(Overloaded) as exc:
        adm.enter(10)
    assert exc.value.message == (
        "The server is at capacity (1 requests running, 1 waiting); retry later."
    )
    adm = Admission(max_inflight=1, max_queue=5, max_queued_tokens=20)
    adm.enter(1)
    adm.enter(15)
    adm.enter(5)  # exactly at the bound of queued tokens: still admitted
    with pytest.raises(Overloaded) as exc:
        adm.enter(1)
    assert exc.value.message == "The server's queue holds too many prompt tokens; retry later."


def test_the_reserve_limits_and_its_edges() -> None:
    # No reserve: the engine's slots do not cap our places.
    adm = Admission(8, 0, 0, engine_slots=4)
    assert all(adm.enter(1, priority=20).running for _ in range(8))
    # A reserve as large as the places: only the urgent start, even when idle.
    adm = Admission(4, 4, 100, reserve=4)
    assert adm.general_limit == 0
    assert not adm.enter(1, priority=1).running  # reserve_priority defaults to 0
    assert adm.enter(1, priority=0).running


def test_a_running_place_waits_for_nothing() -> None:
    async def scenario() -> None:
        adm = Admission(1, 1, 10)
        place = adm.enter(1)
        await asyncio.wait_for(place.wait(), timeout=30)
        assert place.running and place._slot is None

    asyncio.run(scenario())


def test_queue_seconds_is_from_joining_to_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    adm = Admission(1, 1, 10)
    holder = adm.enter(1)
    waiter = adm.enter(1)
    assert holder.queue_seconds() == 0.0  # never waited
    now[0] = 102.5
    assert waiter.queue_seconds() == 2.5  # so far
    holder.release()
    assert waiter.running
    now[0] = 110.0
    assert waiter.queue_seconds() == 2.5  # fixed once it started
    assert holder.queue_seconds() == 0.0


def vt(adm: Admission, flow: Hashable) -> float | None:
    return adm._vt.get(flow)


def test_counters_charge_cost_over_weight_and_settle() -> None:
    adm = Admission(1, 10, 1000)
    a = adm.enter(5, flow="a", cost=30, weight=3)
    assert vt(adm, "a") == 10.0  # charged on starting, from nothing
    a.used = 60
    a.release()
    assert vt(adm, "a") == 20.0  # settled to 60 / 3


def test_a_flow_back_from_idle_is_lifted_to_the_least_waiting_counter() -> None:
    adm = Admission(1, 10, 1000)
    holder = adm.enter(1, flow="z", cost=100)  # z: 100, the last served
    adm.enter(1, flow="w", cost=1)  # w waits: lifted to the last served, 100
    assert vt(adm, "w") == 100.0
    adm.enter(1, flow="n", cost=1)  # new: lifted to the least waiting, w's 100
    assert vt(adm, "n") == 100.0
    adm._vt["rich"] = 500.0  # a flow that was served more than that while away
    adm.enter(1, flow="rich", cost=1)
    assert vt(adm, "rich") == 500.0  # never lowered
    del holder


def test_a_lift_below_one_token_and_a_flow_never_charged() -> None:
    adm = Admission(1, 10, 1000)
    adm.enter(1, flow="z", cost=1, weight=2)  # last served counter 0.5
    adm.enter(1, flow="w", cost=1)
    assert vt(adm, "w") == 0.5
    adm = Admission(1, 10, 1000)
    adm.enter(1, flow="z", cost=0)  # served, counter 0
    adm.enter(1, flow="w", cost=1)  # not lifted (0 is not above nothing): no counter
    assert "w" not in adm._vt
    adm.enter(1, flow="n", cost=1)  # the least waiting counter is w's: none, i.e. 0
    assert "n" not in adm._vt


def test_nothing_served_yet_lifts_nobody() -> None:
    adm = Admission(1, 5, 100, reserve=1)  # no general place: low priority waits at once
    adm.enter(1, priority=5, flow="f")
    assert adm._vt == {}


def test_a_flow_waiting_at_another_priority_is_not_idle() -> None:
    adm = Admission(1, 10, 1000)
    adm.enter(1, flow="z", cost=50)
    adm.enter(1, priority=5, flow="a", cost=1)
    adm._vt["a"] = 0.0  # a waits at priority 5, behind in service
    adm.enter(1, priority=0, flow="w", cost=1)
    adm._vt["w"] = 50.0  # w waits at priority 0 with 50
    adm.enter(1, priority=0, flow="a", cost=1)  # a is backlogged, not idle: no lift to 50
    assert vt(adm, "a") == 0.0


def test_the_least_counter_starts_next_and_a_flow_without_one_counts_as_zero() -> None:
    adm = Admission(1, 10, 1000)
    holder = adm.enter(1, flow="z", cost=0)
    bare = adm.enter(1, flow="bare", cost=1)  # lifted to nothing: no counter, i.e. 0
    half = adm.enter(1, flow="half", cost=1)
    adm._vt["half"] = 0.5
    assert "bare" not in adm._vt
    holder.release()
    assert bare.running and not half.running


def test_the_batch_room_rule() -> None:
    """Batch lines fill up to their share of the engine's places, less the
    places online requests run in, and none while anything waits."""
    adm = Admission(max_inflight=4, max_queue=4, max_queued_tokens=100)
    assert adm.batch_room(slots=8, share=0.75, lines=0) == 6
    assert adm.batch_room(slots=8, share=0.01, lines=0) == 1  # at least one place
    online = [adm.enter(1) for _ in range(3)]  # three online requests run
    assert adm.batch_room(slots=8, share=0.75, lines=0) == 5
    assert adm.batch_room(slots=8, share=0.75, lines=2) == 6  # two of them were lines
    online += [adm.enter(1), adm.enter(1)]  # the fifth waits: no room for lines
    assert adm.queued == 1 and adm.batch_room(slots=8, share=0.75, lines=0) == 0
    for place in online:
        place.release()
