"""When base requests take the zero adapter (app.engine.zero_lora.BaseGuard):
never an unguarded base request beside an adapter request or a guarded
one in the engine, no zero adapter on base-only traffic, and requests
counted out at the engine's end, not their reader's."""

from __future__ import annotations

import asyncio

import pytest

from app.engine.zero_lora import BaseGuard


def test_base_only_traffic_runs_without_the_zero_adapter() -> None:
    guard = BaseGuard(linger=0)
    assert guard.base("a") is False and guard.base("b") is False
    assert len(guard.plain) == 2
    guard.base_done("a", False)
    guard.base_done("a", False)  # said twice (the end, then the finally): once
    assert list(guard.plain) == ["b"]
    guard.base_done("b", False)
    assert guard.plain == {}


def test_an_adapter_request_waits_for_unguarded_base_requests() -> None:
    async def run() -> None:
        guard = BaseGuard(linger=0)
        assert guard.base("p") is False  # a base request running unguarded
        entered = asyncio.ensure_future(guard.adapter())
        await asyncio.sleep(0.01)
        assert not entered.done()  # it would share a batch with the unguarded one
        assert guard.base("g1") is True  # base requests from now on are guarded
        guard.base_done("p", False)  # the unguarded one ends
        await asyncio.wait_for(entered, 1)
        assert guard.base("g2") is True  # guarded while the adapter request runs
        guard.base_done("g1", True)
        guard.base_done("g2", True)
        guard.adapter_done()
        assert guard.base("p2") is False  # linger 0, no guarded one left: base-only again
        guard.base_done("p2", False)

    asyncio.run(run())


def test_no_plain_request_beside_a_guarded_one_past_the_linger() -> None:
    # The hole the review found: once the linger ended, a new base request
    # went plain while a guarded one still ran (the batch then runs LoRA
    # kernels, and the plain request's index -1 reads a real adapter's slot).
    async def run() -> None:
        guard = BaseGuard(linger=0)
        await guard.adapter()
        assert guard.base("long") is True  # a long guarded stream
        guard.adapter_done()  # the linger (0) is over at once
        assert guard.base("short") is True  # guarded: "long" is still in the engine
        guard.base_done("short", True)
        guard.base_done("long", True)
        assert guard.base("after") is False  # nothing guarded left: plain again

    asyncio.run(run())


def test_counted_out_when_the_engine_ends_it_not_when_its_reader_does() -> None:
    async def run() -> None:
        in_engine = {"slow"}
        guard = BaseGuard(linger=0, in_engine=in_engine.__contains__, poll=0.01)
        assert guard.base("slow") is False
        guard.produced("slow", False)
        entered = asyncio.ensure_future(guard.adapter())
        await asyncio.sleep(0.05)
        assert not entered.done()  # still generating
        in_engine.discard("slow")  # finished in the engine; its reader lags behind
        await asyncio.wait_for(entered, 1)
        guard.adapter_done()
        # A guarded request the engine ended, its reader still open, guards nobody.
        in_engine.add("g")
        await guard.adapter()
        assert guard.base("g") is True
        guard.produced("g", True)
        guard.adapter_done()
        assert guard.base("short") is True  # "g" is in the engine
        guard.base_done("short", True)
        in_engine.discard("g")  # the engine ended "g"; its reader has not caught up
        assert guard.base("plain") is False

    asyncio.run(run())


def test_a_request_not_yet_in_the_engine_is_not_counted_out() -> None:
    async def run() -> None:
        guard = BaseGuard(linger=0, in_engine=lambda _: False, poll=0.01)
        assert guard.base("new") is False  # not produced yet: maybe not added yet
        entered = asyncio.ensure_future(guard.adapter())
        await asyncio.sleep(0.05)
        assert not entered.done()
        guard.base_done("new", False)
        await asyncio.wait_for(entered, 1)

    asyncio.run(run())


def test_guarded_for_a_while_after_the_last_adapter_request() -> None:
    async def run() -> None:
        guard = BaseGuard(linger=30)
        await guard.adapter()
        guard.adapter_done()
        assert guard.base("a") is True  # no flapping between adapter requests
        guard.base_done("a", True)

    asyncio.run(run())


def test_a_cancelled_wait_counts_itself_out() -> None:
    async def run() -> None:
        guard = BaseGuard(linger=0)
        guard.base("p")
        waiting = asyncio.ensure_future(guard.adapter())
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert guard.adapters == 0
        guard.base_done("p", False)
        assert guard.base("q") is False

    asyncio.run(run())
