"""The adapters this gateway serves, as the registry directory (and
GATEWAY_LORA_MODULES) say: each checked, copied, loaded into the engine
under an id of its own content. `name@N` is version N of `name`, and `name`
alone the newest version. A version a newer one replaced, or an adapter
whose directory went away, is unloaded once its requests in flight end:
never mid-stream. Each change is one audit line."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path

from app.adapters.check import AdapterRefused, AdapterSpec, ModelShape, inspect, read
from app.adapters.files import Staging, fingerprint, listing, split_name
from app.engine.protocol import AdapterRef, Engine
from app.errors import GatewayError, ModelNotFound
from app.observability.adapter_metrics import AdapterMetrics

audit = logging.getLogger("app.audit")
logger = logging.getLogger(__name__)
NOT_FOUND = "The model does not exist, or this key may not use it; GET /v1/models lists yours."


@dataclass(eq=False)
class Adapter:
    name: str  # as clients send it, version included
    family: str  # the name without its version (the alias)
    version: int | None
    ref: AdapterRef  # what the engine loads (a private copy of the checked bytes)
    spec: AdapterSpec
    source: Path
    seen: tuple[int, int, int, int] | None  # the source's fingerprint when read
    owner: Adapters
    waiting: int = 0
    running: int = 0
    retired: bool = False  # not served any more (its directory went away or changed)
    gone: bool = False  # retired and drained: unloaded, its copy deleted
    latest: bool = True  # the newest of its family (what the alias serves)

    @property
    def held(self) -> int:
        return self.waiting + self.running

    def hold(self, refused: Callable[[], None]) -> None:
        """A request through it is admitted (waiting until it produces); if
        it was unloaded since the request was checked, `refused` and 404."""
        if self.gone:
            refused()
            raise ModelNotFound(NOT_FOUND, param="model")
        self.waiting += 1
        self.owner.touched(self, running=False)

    def started(self) -> None:
        self.waiting -= 1
        self.running += 1
        self.owner.touched(self, running=True)

    def release(self, started: bool, prompt_tokens: int, used: int | None) -> None:
        """The request ended; `used`: its prompt and completion tokens, if settled."""
        if started:
            self.running -= 1
        else:
            self.waiting -= 1
        self.owner.released(self, prompt_tokens, max(0, (used or prompt_tokens) - prompt_tokens))


@dataclass
class Adapters:
    engine: Engine
    shape: ModelShape
    max_rank: int
    max_loras: int
    max_cpu_loras: int
    staging: Staging
    metrics: AdapterMetrics
    lora_dir: Path | None = None
    modules: dict[str, Path] = field(default_factory=dict)  # GATEWAY_LORA_MODULES
    ascend: bool = False
    by_name: dict[str, Adapter] = field(default_factory=dict)
    aliases: dict[str, Adapter] = field(default_factory=dict)
    draining: set[Adapter] = field(default_factory=set)
    changing: set[str] = field(default_factory=set)  # names an admin call is loading or unloading
    _refused: dict[str, tuple[object, str]] = field(default_factory=dict)
    _next_id: int = 1
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _device: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _host: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _held: int = 0
    _tasks: set[asyncio.Future[object]] = field(default_factory=set)

    def find(self, model: str) -> Adapter | None:
        """The adapter a model id names: exactly, or as its family's newest."""
        return self.by_name.get(model) or self.aliases.get(model)

    def check(self, path: Path) -> tuple[tuple[bytes, bytes], AdapterSpec]:
        """An adapter directory's files and what they are, checked against the
        served model (blocking: a thread's), or AdapterRefused."""
        files = read(path, self.shape.weights_limit(self.max_rank))
        return files, inspect(files, self.shape, self.max_rank, self.ascend)

    def refuse(self, name: str, why: AdapterRefused | GatewayError, where: str) -> None:
        reason = why.reason if isinstance(why, AdapterRefused) else "engine"
        self.metrics.refusals[reason].inc()
        logger.error("adapter %s refused (%s): %s", name[:80], where, why)

    async def rescan(self, why: str) -> None:
        """Look at the registry again and converge on it (one look at a time)."""
        async with self._lock:
            found, refused = await asyncio.to_thread(self._look)
            for name, (key, error) in refused.items():
                if name not in self._refused or self._refused[name][0] != key:  # once per change
                    self.refuse(name, error, why)
            self._refused = {n: (key, str(e)) for n, (key, e) in refused.items()}
            for name, old in list(self.by_name.items()):
                if found.get(name) is not old:
                    del self.by_name[name]
                    old.retired = True
                    audit.info("adapter %s retired (%s)", name, why)
                    self._drain(old)
            for name, new in found.items():
                if name not in self.by_name and await self._load(new, why):
                    self.by_name[name] = new
            self._realias()

    def rescan_soon(self, why: str) -> None:
        """A rescan in the background (SIGHUP's handler cannot wait)."""
        self._background(self.rescan(why))

    def _background(self, work: Coroutine[object, object, object]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _look(self) -> tuple[dict[str, Adapter], dict[str, tuple[object, AdapterRefused]]]:
        """Every adapter the registry names, read and checked where it changed
        (a thread). Whatever goes wrong with one directory is its refusal,
        never the look's: the others serve."""
        found: dict[str, Adapter] = {}
        refused: dict[str, tuple[object, AdapterRefused]] = {}
        made: list[Path] = []  # copies of this look, removed if it fails as a whole
        try:
            sources = listing(self.lora_dir)
            sources.update(self.modules)
            for name, path in sources.items():
                seen = fingerprint(path)
                try:
                    adapter = self._look_at(name, path, seen, made)
                except AdapterRefused as exc:
                    refused[name] = (seen, exc)
                    continue
                except Exception as exc:  # a bug's or the disk's: still only this one
                    logger.exception("adapter %s could not be checked", name[:80])
                    why = f"it could not be checked ({type(exc).__name__})"
                    refused[name] = (seen, AdapterRefused(why, "unreadable"))
                    continue
                found[name] = adapter
        except BaseException:
            for copy in made:
                self.staging.drop(copy)
            raise
        return found, refused

    def _look_at(
        self, name: str, path: Path, seen: tuple[int, int, int, int] | None, made: list[Path]
    ) -> Adapter:
        old = self.by_name.get(name)
        if old is not None and old.source == path and seen is not None and old.seen == seen:
            return old
        parts = split_name(name)
        if parts is None:
            raise AdapterRefused("not a valid adapter name (name or name@N)", "name")
        files, spec = self.check(path)
        if old is not None and old.spec.digest == spec.digest:
            old.seen, old.source = seen, path
            return old
        copy = self.staging.put(f"{self._next_id}-{spec.digest[:16]}", files)
        made.append(copy)
        ref = AdapterRef(name, self._next_id, str(copy))
        self._next_id += 1
        return Adapter(name, parts[0], parts[1], ref, spec, path, seen, self)

    async def _load(self, adapter: Adapter, why: str) -> bool:
        started = time.monotonic()
        try:
            await self.engine.add_adapter(adapter.ref)
        except GatewayError as exc:
            self.refuse(adapter.name, exc, why)
            self.staging.drop(Path(adapter.ref.path))
            return False
        self.metrics.load_seconds.observe(time.monotonic() - started)
        self.metrics.added(adapter.name)
        self._cache(self._host, adapter.name, self.max_cpu_loras, "host")
        spec = adapter.spec
        audit.info(
            "adapter %s loaded (%s): rank %d, %s, id %d",
            adapter.name, why, spec.rank, ",".join(spec.targets), adapter.ref.id,
        )  # fmt: skip
        return True

    def _realias(self) -> None:
        """Each family's newest version takes the family's name (unless an
        adapter is called that outright); the versions it replaced unload
        once drained."""
        newest: dict[str, Adapter] = {}
        for a in self.by_name.values():
            if a.version is not None and a.family not in self.by_name:
                best = newest.get(a.family)
                if best is None or (best.version or 0) < a.version:
                    newest[a.family] = a
        for family, a in newest.items():
            if self.aliases.get(family) is not a:
                audit.info("adapter %s now answers as %s", a.name, family)
        self.aliases = newest
        latest = set(newest.values())
        for a in self.by_name.values():
            was, a.latest = a.latest, a.version is None or a in latest
            if was and not a.latest:
                self._drain(a)
            elif a.latest:
                self.draining.discard(a)  # newest again (the one after it went away)

    def _drain(self, adapter: Adapter) -> None:
        """Unload now if nothing runs through it, else when the last request ends."""
        self.draining.add(adapter)
        if adapter.held == 0:
            self._unload(adapter)

    def _unload(self, adapter: Adapter) -> None:
        self.draining.discard(adapter)
        self._host.pop(adapter.name, None)
        self._device.pop(adapter.name, None)
        self._background(self.engine.remove_adapter(adapter.ref))
        if adapter.retired:
            adapter.gone = True
            self.staging.drop(Path(adapter.ref.path))
            if adapter.name not in self.by_name:  # not replaced under the same name
                self.metrics.removed(adapter.name)
            audit.info("adapter %s unloaded (drained)", adapter.name)
        else:  # a superseded version: still served by its full name, loaded again on use
            for where in ("device", "host"):
                self.metrics.loaded.labels(self.metrics.model, adapter.name, where).set(0)
            audit.info("adapter %s unloaded from the engine (superseded, drained)", adapter.name)

    def touched(self, adapter: Adapter, running: bool) -> None:
        """A request was admitted (running False) or produced its first output."""
        m = self.metrics
        m.inflight.labels(m.model, adapter.name, "waiting").set(adapter.waiting)
        if running:
            m.inflight.labels(m.model, adapter.name, "running").set(adapter.running)
            self._cache(self._device, adapter.name, self.max_loras, "device")
        else:
            self._held += 1
            m.requests.labels(m.model, adapter.name).inc()
            self._cache(self._host, adapter.name, self.max_cpu_loras, "host")

    def released(self, adapter: Adapter, prompt_tokens: int, completion_tokens: int) -> None:
        m = self.metrics
        self._held -= 1
        if not adapter.gone:
            m.inflight.labels(m.model, adapter.name, "waiting").set(adapter.waiting)
            m.inflight.labels(m.model, adapter.name, "running").set(adapter.running)
            m.tokens.labels(m.model, adapter.name, "prompt").inc(prompt_tokens)
            m.tokens.labels(m.model, adapter.name, "completion").inc(completion_tokens)
        if adapter.held == 0 and (adapter in self.draining or not adapter.latest):
            self._unload(adapter)
        if self._held == 0:
            self.engine.adapters_idle()

    def _cache(self, lru: OrderedDict[str, None], name: str, size: int, where: str) -> None:
        """The engine's LRU caches, mirrored: `name` used now, the oldest out when full."""
        lru[name] = None
        lru.move_to_end(name)
        m = self.metrics
        m.loaded.labels(m.model, name, where).set(1)
        while len(lru) > size:
            old, _ = lru.popitem(last=False)
            if old in self.by_name:
                m.loaded.labels(m.model, old, where).set(0)
