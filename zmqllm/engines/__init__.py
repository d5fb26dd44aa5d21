"""Model engines: the `Engine` interface and the factory that picks one from config."""

from __future__ import annotations

from pathlib import Path

from zmqllm.config import NodeConfig
from zmqllm.engines.base import Engine


def build_engine(config: NodeConfig, cache_dir: Path) -> Engine:
    """Make (not yet load) the engine a daemon's config names."""
    if config.engine == "echo":
        from zmqllm.engines.echo import EchoEngine

        return EchoEngine(rate=config.echo_rate, slots=config.slots or 1)
    if config.engine == "llama":
        assert config.model is not None  # the config refuses engine = "llama" without a model
        settings = dict(model=config.model, model_name=config.model_name, cache_dir=cache_dir, n_ctx=config.ctx,
                        n_threads=config.threads, n_gpu_layers=config.gpu_layers, n_batch=config.batch,
                        flash_attn=bool(config.flash_attn), chat_format=config.chat_format)
        if (config.slots or 1) > 1:  # continuous batching: several sequences in one llama.cpp context
            from zmqllm.engines.batched import BatchedLlamaEngine

            return BatchedLlamaEngine(slots=config.slots, **settings)
        from zmqllm.engines.llama import LlamaEngine

        return LlamaEngine(**settings)
    raise ValueError(f"unknown engine {config.engine!r}")
