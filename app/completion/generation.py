"""One request's run in the engine, as one object: its admission place, its
deadline, its prompts' engine requests fanned into one sequence of outputs,
and, however it ends, the abort of what is unfinished and the place given back.

    generation = runner.open(prep)      # admission decided now (or Overloaded)
    async with generation:
        async for prompt_index, output in generation:
            ...

A deadline that passes becomes `RequestTimeout` here, counted once; a
generation closed before its outputs ended, without an error or timeout,
is a client that went away, counted once. `settle` tells the place and the
record what the run used; one that fails to start settles and closes itself.
A task adapter is held from admission to close (never unloaded mid-run)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import Any

from app.completion.admission import Admission, Place
from app.completion.fan_in import engine_outputs
from app.completion.prepared import PreparedCompletion, PreparedPrompt
from app.engine.protocol import Engine, RequestOutput
from app.errors import GatewayError, RequestTimeout
from app.observability.metrics import Metrics

Tagged = tuple[int, RequestOutput]  # (prompt index, engine output)


class Runner:
    """Opens generations; knows every engine request in flight (for drain)."""

    def __init__(
        self, engine: Engine, admission: Admission, metrics: Metrics, timeout: float | None
    ):
        self.engine = engine
        self.admission = admission
        self.metrics = metrics
        self.timeout = timeout
        self.active: set[str] = set()  # engine request ids in flight
        self.generations: set[Generation] = set()  # admitted, not yet closed
        self.broken: GatewayError | None = None  # set once: every generation ends with it

    def open(self, prep: PreparedCompletion) -> Generation:
        """Admit now: a running or queued place, or Overloaded (503)."""
        if self.broken is not None:
            raise self.broken
        place = self.admission.enter(
            prep.prompt_tokens, prep.priority, prep.flow, weight=prep.weight, share=prep.share
        )
        if prep.adapter is not None:  # ModelNotFound if unloaded since the request was checked
            prep.adapter.hold(place.release)
        self.generations.add(generation := Generation(self, prep, place))
        return generation

    def break_all(self, error: GatewayError) -> None:
        """End every generation with `error` now, whatever it is waiting for
        (a hung engine sends nothing more): its deadline is moved to now."""
        self.broken = error
        for generation in list(self.generations):
            generation.interrupt()

    async def abort_all(self) -> None:
        """Abort every engine request in flight (drain timeout)."""
        for request_id in list(self.active):
            await self.engine.abort(request_id)

    def timed_out(self) -> RequestTimeout:
        self.metrics.timeouts.inc()
        assert self.timeout is not None
        return RequestTimeout(
            f"The request did not finish within {self.timeout:g} seconds "
            "(GATEWAY_REQUEST_TIMEOUT); its generation was stopped."
        )


class Generation:
    __slots__ = (
        "_cancelled",
        "_closed",
        "_expired",
        "_first",
        "_produced",
        "_single",
        "_source",
        "_timer",
        "_waiter",
        "cached_tokens",
        "failed",
        "finished",
        "place",
        "prep",
        "runner",
    )

    def __init__(self, runner: Runner, prep: PreparedCompletion, place: Place):
        self.runner = runner
        self.prep = prep
        self.place = place
        self.finished = False  # every output has arrived
        self.failed = False  # ended by an error or the deadline
        self.cached_tokens = 0  # prompt tokens the engine found in its prefix cache
        # One prompt: the engine's own output stream, untagged (no generator
        # of ours between it and the consumer: each level costs per token).
        # Several: their outputs fanned in, tagged with the prompt index.
        self._single = len(prep.prompts) == 1
        self._source: AsyncGenerator[Any, None] | None = None
        self._first: Tagged | None = None
        self._closed = False
        # One timer per request for its deadline (not one per output): when it
        # fires it cancels the task waiting here, and the wait turns that into
        # RequestTimeout, as asyncio.timeout does.
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False  # the deadline passed, or the runner broke
        self._waiter: asyncio.Task[Any] | None = None  # the task waiting on us now
        self._cancelled: asyncio.Task[Any] | None = None  # the task we cancelled
        self._produced = False  # some prompt has its first output (an adapter's "running")

    @property
    def queued(self) -> bool:
        return self.place.queued

    async def start(self) -> None:
        """Wait for a running place, submit, and wait for the first output, so
        that errors the engine raises on admission come before any answer.
        If it fails, the generation is over: settled (nothing came out), closed."""
        try:
            await self._start()
        except BaseException:
            self.settle()
            await self.close()
            raise

    async def _start(self) -> None:
        deadline = self.prep.deadline
        if self._timer is None and deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self.interrupt)
        if self._expired or self.runner.broken is not None:
            raise self._failed(TimeoutError()) from None
        task = self._waiter = asyncio.current_task()
        try:
            await self.place.wait()
            self._source = engine_outputs(
                self.runner.engine, self.prep, self.runner.active, self._accepted
            )
            try:
                first = await anext(self._source)
            except StopAsyncIteration:
                self.finished = True
            else:
                if self._single:
                    self._accepted(self.prep.prompts[0], first)
                    first = (0, first)
                self._first = first
        except BaseException as exc:
            error = self._translate(exc, task)
            if error is exc:
                raise
            raise error from None
        finally:
            self._waiter = None

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Tagged:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        source = self._source
        if source is None:
            if self.finished or self._closed:
                raise StopAsyncIteration
            await self.start()  # it was queued
            return await self.__anext__()
        if self._expired:
            raise self._failed(TimeoutError()) from None
        task = self._waiter = asyncio.current_task()
        try:
            if self._single:
                return 0, await anext(source)
            return await anext(source)
        except StopAsyncIteration:
            self.finished = True
            raise
        except BaseException as exc:
            error = self._translate(exc, task)
            if error is exc:
                raise
            raise error from None
        finally:
            self._waiter = None

    def _translate(self, exc: BaseException, task: asyncio.Task[Any] | None) -> BaseException:
        """What a failed wait raises: our own cancellation (the deadline, a
        broken runner) becomes its error; any other cancellation (the client
        left, the server stops) stays one; an engine error marks us failed."""
        if isinstance(exc, asyncio.CancelledError):
            if self._cancelled is task and task is not None:
                self._cancelled = None
                if task.uncancel() == 0:
                    return self._failed(TimeoutError())
            return exc
        if isinstance(exc, Exception):
            return self._failed(exc)
        return exc

    def _failed(self, exc: Exception) -> Exception:
        """What to raise for `exc`: the deadline's RequestTimeout (counted
        once), the runner's error, or `exc` itself; the generation has failed."""
        self.failed = True
        if not isinstance(exc, TimeoutError):
            return exc
        broken = self.runner.broken
        return broken if broken is not None else self.runner.timed_out()

    def settle(
        self,
        completion_tokens: int = 0,
        finish_reasons: list[str | None] | None = None,
        ttft_s: float | None = None,
        last_token_at: float | None = None,
        texts: Callable[[], list[str]] | None = None,
    ) -> None:
        """The run is over (before its place goes back; once): settle its
        flow's share to the tokens it used, and tell its record."""
        prep, place = self.prep, self.place
        if place.used is not None:
            return
        place.used = prep.prompt_tokens + completion_tokens
        record = prep.record
        if record is not None:
            record.finished_run(
                completion_tokens=completion_tokens,
                cached_tokens=self.cached_tokens,
                finish_reasons=finish_reasons or [],
                queue_s=place.queue_seconds(),
                ttft_s=ttft_s,
                run_at=place.started,
                last_token_at=last_token_at,
                gone=not (self.finished or self.failed),
            )
            if record.content is not None and texts is not None:
                record.content["output"] = texts()

    def interrupt(self) -> None:
        """End the current wait now (the deadline passed, or the engine is
        hung); a consumer between waits meets it at its next one."""
        self._expired = True
        waiter = self._waiter
        if waiter is not None and self._cancelled is None:
            self._cancelled = waiter
            waiter.cancel()

    async def close(self) -> None:
        """Abort what is unfinished and give the place back; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.runner.generations.discard(self)
        if self._single:
            self.runner.active.discard(self.prep.request_id)
        if self._timer is not None:
            self._timer.cancel()
        if not self.finished and not self.failed:
            self.runner.metrics.client_aborts.inc()  # the client went away
        try:
            if self._source is not None:
                await self._source.aclose()
        finally:
            self.place.release()
            if self.prep.adapter is not None:
                self.prep.adapter.release(self._produced, self.prep.prompt_tokens, self.place.used)

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _accepted(self, prompt: PreparedPrompt, first: RequestOutput) -> None:
        """A prompt's first output: the engine took it; count its tokens, and
        those it found in the prefix cache (vLLM >= 0.2x reports them)."""
        metrics = self.runner.metrics
        metrics.prompt_tokens.inc(len(prompt.token_ids))
        if self.prep.adapter is not None and not self._produced:
            self._produced = True
            self.prep.adapter.started()
        cached = getattr(first, "num_cached_tokens", None)
        if cached:
            self.cached_tokens += cached
            metrics.prompt_cached_tokens.inc(cached)
