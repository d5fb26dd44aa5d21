"""The models a daemon serves: one llama engine per model, made from its config; a folder rescanned.

A node with one `model` and no `models_dir` runs that model's engine directly, loaded at start (as always).
Several models, or a folder, go behind a `ModelHost`: each loads on first use, at most `max_loaded` at once.
The folder is rescanned every `RESCAN_S` seconds (a new file is servable without a restart; a removed one is
unloaded once idle). A file that is not a GGUF is skipped with one warning naming it, and the rest serve.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

from zmqllm.engines.base import Engine, EngineError
from zmqllm.engines.bundled import advertised_name
from zmqllm.engines.host import ModelHost, ModelSpec
from zmqllm.node.config import NodeConfig

log = logging.getLogger("zmqllm.models")

RESCAN_S = 5.0
"""Seconds between looks at `models_dir`: a file copied in is servable within this (a listdir: cheap)."""


def for_model(config: NodeConfig, name: str) -> NodeConfig:
    """The node's settings with the model's own `[models.NAME]` table over them."""
    own = dict(dict(config.per_model).get(name, ()))
    if "slots" in own and "flash_attn" not in own:
        own["flash_attn"] = config.flash_attn if (config.slots or 1) > 1 else own["slots"] > 1
    return dataclasses.replace(config, **own) if own else config


def llama_engine(config: NodeConfig, model: str, cache_dir: Path, model_name: str | None = None) -> Engine:
    """Make (not yet load) the llama engine for one model with the node's settings (its own table's first)."""
    config = for_model(config, advertised_name(model, model_name))
    settings = dict(model=model, model_name=model_name, cache_dir=cache_dir, n_ctx=config.ctx,
                    n_threads=config.threads, n_gpu_layers=config.gpu_layers, n_batch=config.batch,
                    flash_attn=bool(config.flash_attn), chat_format=config.chat_format)
    if (config.slots or 1) > 1:  # continuous batching: several sequences in one llama.cpp context
        from zmqllm.engines.batched import BatchedLlamaEngine

        return BatchedLlamaEngine(slots=config.slots, prefix_cache=config.prefix_cache != "off", **settings)
    from zmqllm.engines.llama import LlamaEngine

    return LlamaEngine(**settings, prefix_cache=config.prefix_cache, prefix_cache_mb=config.prefix_cache_mb)


def serves_several(config: NodeConfig) -> bool:
    return len(config.model) > 1 or config.models_dir is not None


def model_specs(config: NodeConfig, cache_dir: Path, warned: set[tuple[str, float]] | None = None) -> list[ModelSpec]:
    """Every model the config names or its folder holds. Raises `EngineError` when two share a name (which one
    a request meant would be a guess)."""
    from zmqllm.engines.llama import check_gguf

    found: dict[str, ModelSpec] = {}

    def add(model: str, stamp: float) -> None:
        name = advertised_name(model, config.model_name if len(config.model) == 1 and not config.models_dir
                               else None)
        if name in found:
            raise EngineError("bad_request", f"two models are named {name!r}: {found[name].source} and {model}; "
                                             "rename one file")
        found[name] = ModelSpec(name, model, lambda: llama_engine(config, model, cache_dir), stamp,
                                for_model(config, name).slots or 1)

    for model in config.model:
        add(model, _stamp(Path(model).expanduser()))
    if config.models_dir is not None:
        for path in sorted(Path(config.models_dir).expanduser().glob("*.gguf")):
            stamp = _stamp(path)
            try:
                check_gguf(path)
            except EngineError as exc:
                if warned is not None and (str(path), stamp) not in warned:
                    warned.add((str(path), stamp))
                    log.warning("skipping %s", exc.message)
                continue
            add(str(path), stamp)
    return list(found.values())


def _stamp(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def model_host(config: NodeConfig, cache_dir: Path) -> ModelHost:
    specs = model_specs(config, cache_dir, set())
    if not specs:
        raise EngineError("engine_failed", f"no GGUF model to serve in {config.models_dir}")
    for name, _ in config.per_model:
        if name not in {spec.name for spec in specs}:
            log.warning("[models.%s] names no model this node serves (it serves %s)", name,
                        ", ".join(spec.name for spec in specs))
    return ModelHost(specs, config.max_loaded, max(spec.slots for spec in specs), config.ctx)


async def rescan_forever(host: ModelHost, config: NodeConfig, cache_dir: Path) -> None:
    """Keep the host's models in step with `models_dir` until cancelled."""
    warned: set[tuple[str, float]] = set()
    while True:
        await asyncio.sleep(RESCAN_S)
        try:
            specs = await asyncio.to_thread(model_specs, config, cache_dir, warned)
        except (EngineError, OSError) as exc:
            log.warning("models_dir rescan: %s", getattr(exc, "message", None) or exc)
            continue
        before = set(host.models)
        host.set_specs(specs)
        if set(host.models) != before:
            log.info("models now: %s", ", ".join(host.models) or "none")
