"""`ModelHost` in process: load on first use, least recently used out, nothing running unloaded, loads waited for.

Engines here are echo engines whose load waits on a gate, so each test decides when a load finishes. The same
host over real llama models is tested through daemons in tests/test_models_mesh.py.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from zmqllm.engines.base import EngineError, GenerationRequest
from zmqllm.engines.echo import EchoEngine
from zmqllm.engines.host import ModelHost, ModelSpec

pytestmark = pytest.mark.timeout(30)


class GatedEcho(EchoEngine):
    """An echo engine whose load waits for `gate` (when given) and that records its life."""

    def __init__(self, name: str, log: list[str], gate: asyncio.Event | None, fail: bool = False,
                 rate: float = 0) -> None:
        super().__init__(rate=rate, slots=2)
        self.name, self.log, self.gate, self.fail = name, log, gate, fail

    async def load(self) -> None:
        self.log.append(f"load {self.name}")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise EngineError("engine_failed", f"model file /m/{self.name}.gguf is not a GGUF file")

    async def close(self) -> None:
        self.log.append(f"close {self.name}")


def host_of(names: list[str], max_loaded: int, log: list[str], gates: dict[str, asyncio.Event] | None = None,
            failing: tuple[str, ...] = (), rate: float = 0) -> ModelHost:
    gates = gates or {}
    specs = [ModelSpec(n, f"/m/{n}.gguf", lambda n=n: GatedEcho(n, log, gates.get(n), n in failing, rate))
             for n in names]
    return ModelHost(specs, max_loaded, slots=2)


async def ask(host: ModelHost, model: str, cancel: threading.Event | None = None) -> str:
    pieces: list[str] = []
    result = await host.generate(GenerationRequest("one two three", 3, model=model), lambda c: pieces.append(c.text),
                                 cancel or threading.Event())
    return result.finish_reason + ":" + "".join(pieces)


async def test_models_load_on_first_use_and_the_least_recently_used_goes() -> None:
    log: list[str] = []
    host = host_of(["a", "b", "c"], 2, log)
    assert host.models == ("a", "b", "c") and host.loaded_models() == ()
    await ask(host, "a")
    await ask(host, "b")
    await ask(host, "a")  # a is now the most recently used
    assert host.loaded_models() == ("a", "b") and log == ["load a", "load b"]
    assert (await ask(host, "c")).startswith("length:")
    assert host.loaded_models() == ("a", "c") and log == ["load a", "load b", "close b", "load c"]


async def test_one_place_swaps_and_a_third_request_brings_the_first_back() -> None:
    log: list[str] = []
    host = host_of(["a", "b"], 1, log)
    for model in ("a", "b", "a"):
        assert (await ask(host, model)).startswith("length:")
        assert host.loaded_models() == (model,)
    assert log == ["load a", "close a", "load b", "close b", "load a"]


async def test_a_request_arriving_during_a_load_waits_for_that_load() -> None:
    log: list[str] = []
    gate = asyncio.Event()
    host = host_of(["a"], 1, log, {"a": gate})
    first = asyncio.create_task(ask(host, "a"))
    second = asyncio.create_task(ask(host, "a"))
    await asyncio.sleep(0.05)
    assert host.loading_models() == ("a",) and not first.done() and not second.done()
    gate.set()
    assert (await first).startswith("length:") and (await second).startswith("length:")
    assert log == ["load a"]  # one load served both


async def test_a_model_with_running_requests_is_never_unloaded() -> None:
    log: list[str] = []
    host = host_of(["a", "b"], 1, log, rate=50)
    slow = threading.Event()
    running = asyncio.create_task(host.generate(GenerationRequest("x " * 200, 200, model="a"), lambda c: None, slow))
    while host.loaded_models() != ("a",):
        await asyncio.sleep(0.01)
    wants_b = asyncio.create_task(ask(host, "b"))
    await asyncio.sleep(0.1)
    assert "close a" not in log and not wants_b.done()
    late_a = asyncio.create_task(ask(host, "a"))
    await asyncio.sleep(0.1)
    assert not late_a.done()  # no new request starts on the model being replaced
    slow.set()  # a's request ends (cancelled), so a can go
    assert (await running).finish_reason == "cancelled"
    assert (await wants_b).startswith("length:")
    assert (await late_a).startswith("length:")  # then a comes back for the request that waited
    assert log == ["load a", "close a", "load b", "close b", "load a"]


async def test_a_request_waiting_for_its_model_can_be_cancelled() -> None:
    log: list[str] = []
    gate = asyncio.Event()
    host = host_of(["a"], 1, log, {"a": gate})
    first = asyncio.create_task(ask(host, "a"))
    await asyncio.sleep(0.02)
    cancel = threading.Event()
    waiting = asyncio.create_task(ask(host, "a", cancel))
    await asyncio.sleep(0.02)
    cancel.set()
    assert await asyncio.wait_for(waiting, 2) == "cancelled:"
    gate.set()
    assert (await first).startswith("length:")


async def test_a_corrupt_model_fails_with_its_file_named_and_the_rest_serve() -> None:
    log: list[str] = []
    host = host_of(["bad", "good"], 2, log, failing=("bad",))
    with pytest.raises(EngineError) as failed:
        await ask(host, "bad")
    assert "/m/bad.gguf" in failed.value.message and "failed to load" in failed.value.message
    assert host.models == ("good",)  # no longer advertised: the mesh routes it elsewhere
    assert (await ask(host, "good")).startswith("length:")
    with pytest.raises(EngineError):
        await ask(host, "nope")


async def test_a_rescan_adds_models_and_unloads_a_removed_one_once_idle() -> None:
    log: list[str] = []
    host = host_of(["a"], 0, log)
    await ask(host, "a")
    host.set_specs([ModelSpec("b", "/m/b.gguf", lambda: GatedEcho("b", log, None))])
    await asyncio.sleep(0.05)
    assert host.models == ("b",) and host.loaded_models() == () and "close a" in log
    assert (await ask(host, "b")).startswith("length:")
