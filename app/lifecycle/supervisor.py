"""The supervisor: moves the process through its phases (app.lifecycle.phases),
owning the engine's life: build, warm up, watch, drain, shut down."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from app.adapters.registry import Adapters
from app.completion.service import CompletionService
from app.config import Settings
from app.engine.protocol import Engine
from app.engine.warmup import warm_up
from app.errors import EngineStalled
from app.lifecycle.inflight import InFlight
from app.lifecycle.phases import Lifecycle, Phase
from app.lifecycle.watchdog import Watchdog
from app.observability.metrics import EngineStep, Metrics

logger = logging.getLogger(__name__)


# Builds the engine, which calls `on_step` once per engine step.
EngineBuilder = Callable[[Callable[[EngineStep | None], None]], Awaitable[Engine]]
# Builds the completion pipeline over a built engine (app.completion.assembly).
ServiceBuilder = Callable[[Engine], CompletionService]


class Supervisor:
    """Owns the engine's life: build, warm up, watch, drain, shut down."""

    def __init__(
        self,
        settings: Settings,
        build: EngineBuilder,
        assemble: ServiceBuilder,
        metrics: Metrics,
        on_exit: Callable[[], None] = lambda: None,
    ):
        self.settings = settings
        self.metrics = metrics
        self.watchdog = Watchdog(settings, metrics)
        self.lifecycle = Lifecycle()
        metrics.declare_phases([p.value for p in Phase], self.lifecycle.phase.value)
        self.lifecycle.listeners.append(metrics.phase_changed)
        self.service: CompletionService | None = None  # once ready
        self._pipeline: CompletionService | None = None  # once built (warm-up steps count)
        self.engine: Engine | None = None
        self.exit_code = 0
        self.inflight = InFlight()  # requests being served (see app.api.middleware)
        self._build = build
        self._assemble = assemble
        self._on_exit = on_exit
        self._tasks: set[asyncio.Task[None]] = set()
        self._exiting = False

    # -- startup ------------------------------------------------------------

    def start(self) -> None:
        """Load and warm the engine in the background; the server answers meanwhile."""
        self._spawn(self.startup())
        self._spawn(self.metrics.sample_event_loop())

    async def startup(self) -> None:
        lc = self.lifecycle
        try:
            lc.enter(Phase.LOADING)
            engine = self.engine = await self._build(self.engine_step)
            service = self._pipeline = self._assemble(engine)
            lc.enter(Phase.WARMING)
            if service.adapters is not None:  # a restart serves the same adapters at once
                try:
                    await service.adapters.rescan("startup")
                except Exception:  # the base model serves; the next look tries again
                    logger.exception("adapter rescan at startup failed")
            await warm_up(engine, self.settings.warmup)
            freeze_startup_heap()
            self.service = service
            lc.enter(Phase.READY)
        except Exception as exc:
            logger.exception("engine startup failed")
            lc.fail(f"engine startup failed: {_describe(exc)}")
            self.exit_soon(1)
            return
        self._spawn(self._watch(engine, service))
        if service.adapters is not None and self.settings.lora_rescan > 0:
            self._spawn(self._rescan(service.adapters, self.settings.lora_rescan))

    async def _rescan(self, adapters: Adapters, every: float) -> None:
        """Converge on the registry directory now and then (other replicas
        change it too). Cancelled by shutdown()."""
        while True:
            await asyncio.sleep(every)
            try:
                await adapters.rescan("rescan")
            except Exception:  # a defect, or the volume gone: say so, keep serving
                logger.exception("adapter rescan failed")

    def engine_step(self, step: EngineStep | None) -> None:
        """Once per engine step, from vLLM's stat logger (on the event loop);
        None when the step came without scheduler stats."""
        self.watchdog.heartbeat()
        if self._pipeline is not None:
            self._pipeline.engine_stepped()
        if step is not None:
            self.metrics.engine_step(step)

    async def _watch(self, engine: Engine, service: CompletionService) -> None:
        # Cancelled by shutdown().
        try:
            why, hung = await self.watchdog.watch(engine, service.in_engine)
        except Exception as exc:  # a defect in the watch itself: never silent
            # Without the watch a hang would go unnoticed: say so and let the
            # orchestrator restart a process that can watch again.
            logger.exception("the engine watchdog failed")
            why, hung = f"the engine watchdog failed ({exc!r}); restarting", False
        if hung:
            self.metrics.engine_stalls.inc()
            # Nothing more will come: end every request now, with the reason.
            service.break_all(
                EngineStalled("The inference engine stopped responding; retry on another server.")
            )
        self.lifecycle.fail(why)
        self.exit_soon(1)

    # -- request admission -------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The health JSON: phase and timings, and graph capture once the engine exists."""
        snapshot = self.lifecycle.snapshot()
        if self.engine is not None:
            snapshot["graph"] = self.engine.info().get("graph")
        return snapshot

    def serving(self) -> CompletionService | None:
        """The service when requests may be admitted, else None."""
        if self.lifecycle.phase is Phase.READY:
            return self.service
        return None

    # -- shutdown ------------------------------------------------------------

    def exit_soon(self, code: int) -> None:
        """Leave the process after a short grace (health shows why meanwhile)."""
        self.exit_code = code
        loop = asyncio.get_running_loop()
        loop.call_later(self.settings.exit_grace, self._exit)

    def _exit(self) -> None:
        if not self._exiting:
            self._exiting = True
            self._on_exit()

    def begin_drain(self) -> None:
        """SIGTERM: stop admitting at once, let in-flight work finish, then exit."""
        self._spawn(self.drain())

    async def drain(self) -> None:
        lc = self.lifecycle
        if lc.phase in (Phase.DRAINING, Phase.STOPPED):
            return
        if lc.phase is Phase.FAILED:
            self._exit()
            return
        lc.enter(Phase.DRAINING)
        # The port stays open for at least drain_delay: ready answers 503 and
        # every answer closes its connection (closing()), so the endpoint
        # leaves the Service and pooled clients stop reusing connections
        # before the server closes the idle ones (README: Connections).
        delay = asyncio.ensure_future(asyncio.sleep(self.settings.drain_delay))
        try:
            if not await self.inflight.wait_idle(self.settings.drain_timeout):
                logger.warning("drain timeout: aborting %d request(s)", self.inflight.count)
                if self.service is not None:
                    await self.service.abort_all()
                # Aborted streams still send their last chunk and [DONE].
                await self.inflight.wait_idle(5)
            await delay
        finally:
            delay.cancel()
        self._exit()

    def closing(self) -> bool:
        """No new work will be served here (draining, stopped, failed): an
        answer should tell its client to close the connection."""
        return self.lifecycle.phase in _CLOSING

    async def shutdown(self) -> None:
        """Lifespan exit: stop background work and the engine (no orphan processes)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self.engine is not None:
            # On the loop thread, as vLLM's own server does: AsyncLLM stops its
            # engine core, then cancels its output handler, and that handler
            # (a task on this loop) must not run in between, or it logs the
            # stopped core as an EngineDeadError traceback. The server has
            # closed its sockets by now: nothing else waits on the loop.
            self.engine.shutdown()
        if self.lifecycle.phase is not Phase.FAILED:
            self.lifecycle.enter(Phase.STOPPED)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


_CLOSING = frozenset((Phase.DRAINING, Phase.STOPPED, Phase.FAILED))


def freeze_startup_heap() -> None:
    """Put what startup built (torch, vLLM, the tokenizer: ~600k objects) out
    of the garbage collector's reach. A full collection over it takes ~0.3 s
    on the 2-core machine, and each one stalled every stream (the event loop
    lag's p99 reached the 250-500 ms bucket at 128-256 streams). vLLM's engine
    core does the same in its own process."""
    gc.collect()
    gc.freeze()


def _describe(exc: BaseException) -> str:
    """One readable line: the innermost cause's type and first message line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
