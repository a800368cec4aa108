"""Admission places: decided at once, handed on in arrival order, never lost."""

from __future__ import annotations

import asyncio

import pytest

from app.completion.admission import Admission
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
