"""Admission control: a bound on requests in the engine and on those waiting
for a place. The decision is made at once, on arrival: a running place, a
queued place, or 503 + Retry-After. A request once admitted (running or
queued) is never dropped for capacity.

Who gets a freed place: the most urgent priority waiting (lower is sooner,
vLLM's convention); within it, the flow (tenant) with the least weighted
tokens served, a virtual token counter (Sheng et al., "Fairness in Serving
Large Language Models", OSDI 2024): each place charges its flow
`cost / weight` when it starts (the prompt), one token per engine step
while it runs (`step()`, the output as it is generated: a flow with long
outputs does not take every freed place while its requests still run), and
is settled to the real usage when it ends; not `max_tokens` up front, which
a newcomer's counter would be lifted to and the settle then take back. A
flow with nothing waiting and nothing running is lifted, whichever way it
enters (a free place or the queue), to the least counter of the flows that
are waiting or running (or the last one served), so idleness banks no
credit and a newcomer does not take every place from flows served for days.
One flow alone is served oldest first, as before.

With shares (tenants), the queue is shared by weight: a flow may hold at
most `max(1, max_queue * share)` waiting places, and is refused (429
`queue_share_exceeded`) beyond that while others are under theirs.

A reserve keeps `reserve` of the general places for the urgent: a request
whose priority is above `reserve_priority` starts only while fewer than
`general_limit` are running."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Hashable

from app.errors import Overloaded, RateLimited


class Place:
    """One request's place: running, or queued until `wait()` returns.
    `release()` gives it back and may be called any number of times."""

    __slots__ = (
        "_admission",
        "_slot",
        "_tokens",
        "cost",
        "enqueued",
        "flow",
        "priority",
        "queued",
        "running",
        "started",
        "steps",
        "used",
        "weight",
    )

    def __init__(
        self,
        admission: Admission,
        tokens: int,
        priority: int,
        flow: Hashable,
        cost: int,
        weight: float,
    ):
        self._admission = admission
        self._tokens = tokens
        self._slot: asyncio.Future[None] | None = None
        self.priority = priority
        self.flow = flow
        self.cost = cost
        self.weight = weight
        self.queued = False
        self.running = False
        self.enqueued: float | None = None  # monotonic: when it joined the queue, if it did
        self.started: float | None = None  # monotonic: when it started running
        self.used: int | None = None  # tokens really used, set before release()
        self.steps = 0  # the admission's step count when it started

    async def wait(self) -> None:
        """Return once the place is running (at once if it already is)."""
        if not self.queued:
            return
        slot = self._slot = asyncio.get_running_loop().create_future()
        try:
            await slot
        except asyncio.CancelledError:
            # Still queued: leave the queue. Handed a place meanwhile: it is
            # ours until release(), which hands it on.
            if self.queued:
                self._admission._leave(self)
            raise

    def queue_seconds(self) -> float:
        """Seconds queued: until it started, or so far (0: it never waited)."""
        if self.enqueued is None:
            return 0.0
        return (self.started or time.monotonic()) - self.enqueued

    def release(self) -> None:
        """Give the place back; `used` (tokens really used), when set,
        settles the flow's counter against the cost charged on starting."""
        admission = self._admission
        if self.queued:
            admission._leave(self)
        if self.running:
            self.running = False
            admission.running -= 1
            admission._ran(self.flow)
            used = self.used
            if used is not None:
                # Charged so far: the cost, and a token per step it ran.
                charged = self.cost + admission.steps - self.steps
                if used != charged:
                    admission._charge(self.flow, used - charged, self.weight)
            admission._dispatch()


class Admission:
    def __init__(
        self,
        max_inflight: int,
        max_queue: int,
        max_queued_tokens: int,
        reserve: int = 0,
        reserve_priority: int = 0,
        engine_slots: int | None = None,
    ):
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.max_queued_tokens = max_queued_tokens
        self.reserve_priority = reserve_priority
        # Places a request above reserve_priority may take: the engine's
        # running places (or ours, if fewer) less the reserve.
        slots = min(max_inflight, engine_slots or max_inflight)
        self.general_limit = max(0, slots - reserve) if reserve else max_inflight
        self.running = 0
        self.queued = 0
        self.queued_tokens = 0
        # priority -> flow -> its waiting places, oldest first
        self._levels: dict[int, dict[Hashable, deque[Place]]] = {}
        self._vt: dict[Hashable, float] = {}  # flow -> weighted tokens served
        self._running: dict[Hashable, int] = {}  # flow -> its places running now
        self._last_vt = 0.0  # the counter of the flow served last
        self._weights: dict[Hashable, float] = {}  # flow -> weight, while it runs
        self.steps = 0  # engine steps seen (step())

    def batch_room(self, slots: int, share: float, lines: int) -> int:
        """Places batch lines (`lines` of them admitted or about to be) may
        hold in all now: none while any request waits, else up to `share` of
        the engine's `slots`, less the places online requests run in."""
        if self.queued:
            return 0
        online = max(0, self.running - lines)
        return max(0, min(max(1, int(slots * share)), slots - online))

    def _limit(self, priority: int) -> int:
        if priority <= self.reserve_priority:
            return self.max_inflight
        return self.general_limit

    def step(self) -> None:
        """One engine step: each running place generated (about) one token;
        charge its flow now. Per step and flow, never per token."""
        self.steps += 1
        vt, weights = self._vt, self._weights
        for flow, n in self._running.items():
            vt[flow] = vt.get(flow, 0.0) + n / weights[flow]

    def enter(
        self,
        prompt_tokens: int,
        priority: int = 0,
        flow: Hashable = None,
        cost: int | None = None,
        weight: float = 1.0,
        share: float | None = None,
    ) -> Place:
        """Decide now: a running place, a queued one, or Overloaded. `cost`
        (default: the prompt tokens) is what the flow is charged on starting;
        `share` (0-1) the part of the queue the flow may hold."""
        place = Place(
            self, prompt_tokens, priority, flow, prompt_tokens if cost is None else cost, weight
        )
        if not self._running.get(flow) and not self._backlogged(flow):
            self._lift(flow)
        # Whatever waits now cannot start (the places above its limit are
        # taken): a request whose own limit has room goes ahead of it.
        if self.running < self._limit(priority):
            self._start(place)
            return place
        if share is not None:
            mine = max(1, int(self.max_queue * share))
            if self._waiting(flow) >= mine:
                raise RateLimited(
                    f"This tenant has {mine} requests waiting, its share of the queue "
                    "(by weight); retry when one starts.",
                    retry_after=1,
                    code="queue_share_exceeded",
                )
        if self.queued >= self.max_queue:
            raise Overloaded(
                f"The server is at capacity ({self.running} requests running, "
                f"{self.queued} waiting); retry later."
            )
        if self.queued_tokens + prompt_tokens > self.max_queued_tokens:
            raise Overloaded("The server's queue holds too many prompt tokens; retry later.")
        self.queued += 1
        self.queued_tokens += prompt_tokens
        place.queued = True
        place.enqueued = time.monotonic()
        level = self._levels.setdefault(priority, {})
        waiting = level.get(flow)
        if waiting is None:
            waiting = level[flow] = deque()
        waiting.append(place)
        return place

    def _lift(self, flow: Hashable) -> None:
        """Back from idle: no credit for the time away. The floor is the
        least counter of the flows waiting or running (a flow with places
        running is not idle), else the last one served."""
        vt = self._vt
        active = {f for lv in self._levels.values() for f in lv} | self._running.keys()
        active.discard(flow)
        floor = min((vt.get(f, 0.0) for f in active), default=self._last_vt)
        if vt.get(flow, 0.0) < floor:
            vt[flow] = floor

    def _backlogged(self, flow: Hashable) -> bool:
        return any(flow in level and level[flow] for level in self._levels.values())

    def _waiting(self, flow: Hashable) -> int:
        return sum(len(level[flow]) for level in self._levels.values() if flow in level)

    def _charge(self, flow: Hashable, tokens: float, weight: float) -> None:
        self._vt[flow] = self._vt.get(flow, 0.0) + tokens / weight

    def _start(self, place: Place) -> None:
        self.running += 1
        flow = place.flow
        self._running[flow] = self._running.get(flow, 0) + 1
        self._weights[flow] = place.weight
        place.running = True
        place.started = time.monotonic()
        place.steps = self.steps
        self._charge(place.flow, place.cost, place.weight)
        self._last_vt = self._vt[place.flow]

    def _ran(self, flow: Hashable) -> None:
        left = self._running[flow] - 1
        if left:
            self._running[flow] = left
        else:
            del self._running[flow]
            del self._weights[flow]

    def _leave(self, place: Place) -> None:
        """A queued place leaves the queue (started, cancelled or released)."""
        place.queued = False
        self.queued -= 1
        self.queued_tokens -= place._tokens
        level = self._levels.get(place.priority)
        if level is None:
            return
        waiting = level.get(place.flow)
        if waiting is not None and place in waiting:
            waiting.remove(place)
            if not waiting:
                del level[place.flow]
                if not level:
                    del self._levels[place.priority]

    def _dispatch(self) -> None:
        """Start waiting places while their limit has room: the most urgent
        priority first, within it the flow with the least counter."""
        while self._levels:
            priority = min(self._levels)
            if self.running >= self._limit(priority):
                return
            level = self._levels[priority]
            vt = self._vt
            flow = min(level, key=lambda f: vt.get(f, 0.0))  # ties: waiting longest
            place = level[flow][0]
            self._leave(place)
            self._start(place)
            slot = place._slot
            if slot is not None and not slot.done():
                slot.set_result(None)
