"""Many models behind one engine: load on first use, unload the least recently used.

A machine with three GGUF files should need one daemon, not three. `ModelHost` is an `Engine` whose `models`
are every model it can serve; each has a factory making that model's own engine (a `LlamaEngine` or a
`BatchedLlamaEngine`), built and loaded when a request first names it. At most `max_loaded` are loaded at once;
making room unloads the least recently used model that runs nothing. A model with running requests is never
unloaded: the request that needs its place waits, and while it waits no new request starts on the model it is
waiting to replace, so a busy model cannot starve it. A request arriving while its model loads waits for that load
(one load per model at a time). A model whose load fails is reported with one error naming its file, stays out of
`models` (so the mesh stops routing it here) until a rescan finds its file changed, and the other models keep
serving.

The host knows nothing of files or configs: `ModelSpec` carries a name, where it comes from (for messages) and a
factory. `node.daemon` builds the specs from `model`, `models_dir` and `max_loaded`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from zmqllm.engines.base import Emit, Engine, EngineError, GenerationRequest, GenerationResult

log = logging.getLogger("zmqllm.engines.host")

CANCEL_POLL_S = 0.05
"""How often a request waiting for its model looks at its cancel flag (a `threading.Event`, not awaitable)."""


@dataclass(frozen=True)
class ModelSpec:
    """One servable model: its advertised name, its source (a path, for messages) and how to make its engine."""

    name: str
    source: str
    make: Callable[[], Engine]
    stamp: float = 0.0
    """The file's modification time: a model that failed to load is tried again once its file changes."""
    slots: int = 1
    """Requests this model runs at once (the host runs as many as its largest model)."""


class ModelHost(Engine):
    """Serves every model of `specs`, at most `max_loaded` loaded at once (0: no limit)."""

    def __init__(self, specs: Iterable[ModelSpec], max_loaded: int, slots: int, ctx: int = 0) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self.max_loaded = max_loaded
        self.slots = slots
        self.ctx = ctx
        self.on_change: Callable[[], None] = lambda: None
        """Called on every load, unload and rescan (the node refreshes what it advertises)."""
        self._loaded: OrderedDict[str, Engine] = OrderedDict()
        """Loaded engines, least recently used first."""
        self._loading: set[str] = set()
        self._running: dict[str, int] = {}
        self._evicting: set[str] = set()
        """Models a waiting request needs gone: no new request starts on them."""
        self._unloading: set[str] = set()
        """Unloaded but not yet freed: they still hold their place (memory) until `close` returns."""
        self._failed: dict[str, str] = {}
        self._waiting: dict[object, str] = {}
        """Requests waiting for their model to load, in arrival order (one entry each)."""
        self._changed = asyncio.Event()
        self.set_specs(specs)

    # --- what the node advertises -------------------------------------------------------------------------

    @property
    def models(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(sorted(name for name in self._specs if name not in self._failed))

    @property
    def chat(self) -> bool:  # type: ignore[override]
        return any(engine.chat for engine in self._loaded.values())

    def loaded_models(self) -> tuple[str, ...]:
        return tuple(sorted(self._loaded))

    def loading_models(self) -> tuple[str, ...]:
        return tuple(sorted(self._loading))

    def prefix_capacity(self, model: str) -> int:
        engine = self._loaded.get(model)
        return 0 if engine is None else engine.prefix_capacity(model)

    def set_specs(self, specs: Iterable[ModelSpec]) -> None:
        """Replace what can be served (a rescan of the models folder). A loaded model no longer listed is unloaded
        once it runs nothing; a failed one listed again is tried again."""
        new = {spec.name: spec for spec in specs}
        for name in list(self._failed):
            old = self._specs.get(name)
            if name not in new or old is None or (new[name].source, new[name].stamp) != (old.source, old.stamp):
                del self._failed[name]
        self._specs = new
        for name in list(self._loaded):
            if name not in new and not self._running.get(name):
                asyncio.get_running_loop().create_task(self._unload(name))
        self.on_change()

    # --- serving -------------------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest, emit: Emit, cancel: threading.Event) -> GenerationResult:
        name = request.model or self._only_model()
        engine = await self._acquire(name, cancel)
        if engine is None:
            return GenerationResult("cancelled", 0, 0)
        try:
            return await engine.generate(request, emit, cancel)
        finally:
            self._release(name)

    def token_counter(self) -> Callable[[str], int] | None:
        """The most recently used loaded model's tokenizer (workflow splits count with it)."""
        for engine in reversed(self._loaded.values()):
            counter = engine.token_counter()
            if counter is not None:
                return counter
        return None

    async def load(self) -> None:
        """Nothing is loaded before it is asked for; a daemon that must warm a model sends it a request."""

    async def close(self) -> None:
        for name in list(self._loaded):
            await self._unload(name)

    def _only_model(self) -> str:
        models = self.models
        if len(models) == 1:
            return models[0]
        raise EngineError("bad_request", f"this node serves several models ({', '.join(models)}): name one")

    async def _acquire(self, name: str, cancel: threading.Event) -> Engine | None:
        """The loaded engine for `name`, counted as running; loads it (making room) when needed. None when
        `cancel` was set while waiting. Requests needing a load are served in arrival order."""
        turn = object()
        try:
            while True:
                if name not in self._specs:
                    raise EngineError("no_peer_for_model", f"this node does not serve {name!r}")
                if name in self._failed:
                    raise EngineError("engine_failed", self._failed[name])
                engine = self._loaded.get(name)
                if engine is not None and name not in self._evicting:
                    self._running[name] = self._running.get(name, 0) + 1
                    self._loaded.move_to_end(name)
                    return engine
                if engine is None:
                    self._waiting.setdefault(turn, name)
                    if self._first_to_load() is turn and self._make_room(name):
                        await self._load(name)
                        continue
                if cancel.is_set():
                    return None
                await self._wait_for_change()
        finally:
            if self._waiting.pop(turn, None) is not None:
                self._notify()

    def _first_to_load(self) -> object | None:
        """The earliest waiting request whose model is neither loaded nor loading: the only one that may load."""
        return next((turn for turn, name in self._waiting.items()
                     if name not in self._loaded and name not in self._loading), None)

    def _release(self, name: str) -> None:
        self._running[name] -= 1
        if not self._running[name]:
            del self._running[name]
            if name in self._evicting or name not in self._specs:
                asyncio.get_running_loop().create_task(self._unload(name))
        self._notify()

    def _make_room(self, wanted: str) -> bool:
        """True when `wanted` may load now; otherwise marks the model it will replace (the least recently used,
        idle ones first) so it takes no new work, and unloads it when idle."""
        if not self.max_loaded or len(self._loaded) + len(self._loading) + len(self._unloading) < self.max_loaded:
            return True
        if self._unloading or self._evicting & set(self._loaded):
            return False  # a place is already being freed; wait for it
        victims = list(self._loaded)  # least recently used first
        victim = next((n for n in victims if not self._running.get(n)), victims[0] if victims else None)
        if victim is None:
            return False  # every place is a load in progress
        log.info("unloading model %s to load %s (max_loaded %d)", victim, wanted, self.max_loaded)
        self._evicting.add(victim)
        if not self._running.get(victim):
            asyncio.get_running_loop().create_task(self._unload(victim))
        return False

    async def _load(self, name: str) -> None:
        spec = self._specs[name]
        self._loading.add(name)
        self.on_change()
        log.info("loading model %s (%s)", name, spec.source)
        started = time.monotonic()
        engine: Engine | None = None
        try:
            engine = spec.make()
            await engine.load()
        except Exception as exc:  # a corrupt file must not take the node down
            reason = exc.message if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
            self._failed[name] = f"model {name} ({spec.source}) failed to load: {reason}"
            log.error("%s", self._failed[name])
            if engine is not None:
                await engine.close()
        else:
            self._loaded[name] = engine
            log.info("loaded model %s in %.1f s", name, time.monotonic() - started)
        finally:
            self._loading.discard(name)
            self._notify()

    async def _unload(self, name: str) -> None:
        engine = self._loaded.pop(name, None)
        self._evicting.discard(name)
        if engine is None:
            return
        self._unloading.add(name)
        self.on_change()
        try:
            await engine.close()
        finally:
            self._unloading.discard(name)
            log.info("unloaded model %s", name)
            self._notify()

    def _notify(self) -> None:
        """Wake every waiter: each waits on the event current when it looked, so none misses a change."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        self.on_change()

    async def _wait_for_change(self) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), CANCEL_POLL_S)
        except TimeoutError:
            pass
