"""When base requests take the zero adapter (app.engine.zero_lora.BaseGuard):
never an unguarded base request and an adapter request in the engine at
once, and no zero adapter on base-only traffic."""

from __future__ import annotations

import asyncio

import pytest

from app.engine.zero_lora import BaseGuard


def test_base_only_traffic_runs_without_the_zero_adapter() -> None:
    guard = BaseGuard(linger=0)
    assert guard.base() is False and guard.base() is False
    assert guard.plain == 2
    guard.base_done(False)
    guard.base_done(False)
    assert guard.plain == 0


def test_an_adapter_request_waits_for_unguarded_base_requests() -> None:
    async def run() -> None:
        guard = BaseGuard(linger=0)
        assert guard.base() is False  # a base request running unguarded
        entered = asyncio.ensure_future(guard.adapter())
        await asyncio.sleep(0.01)
        assert not entered.done()  # it would share a batch with the unguarded one
        assert guard.base() is True  # base requests from now on are guarded
        guard.base_done(False)  # the unguarded one ends
        await asyncio.wait_for(entered, 1)
        assert guard.base() is True  # guarded while the adapter request runs
        guard.base_done(True)
        guard.base_done(True)
        guard.adapter_done()
        assert guard.base() is False  # linger 0: base-only again
        guard.base_done(False)

    asyncio.run(run())


def test_guarded_for_a_while_after_the_last_adapter_request() -> None:
    async def run() -> None:
        guard = BaseGuard(linger=30)
        await guard.adapter()
        guard.adapter_done()
        assert guard.base() is True  # no flapping between adapter requests
        guard.base_done(True)

    asyncio.run(run())


def test_a_cancelled_wait_counts_itself_out() -> None:
    async def run() -> None:
        guard = BaseGuard(linger=0)
        guard.base()
        waiting = asyncio.ensure_future(guard.adapter())
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert guard.adapters == 0
        guard.base_done(False)
        assert guard.base() is False

    asyncio.run(run())
