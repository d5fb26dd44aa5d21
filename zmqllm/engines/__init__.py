"""Model engines: the `Engine` interface and the factory that picks one from config."""

from __future__ import annotations

from pathlib import Path

from zmqllm.engines.base import Engine


def build_engine(kind: str, *, echo_rate: float, slots: int, model: str | None = None,
                 model_name: str | None = None, cache_dir: Path | None = None, **llama: object) -> Engine:
    """Make the engine named by `kind` ("echo" or "llama"); llama settings pass through."""
    if kind == "echo":
        from zmqllm.engines.echo import EchoEngine

        return EchoEngine(rate=echo_rate, slots=slots)
    if kind == "llama":
        from zmqllm.engines.llama import LlamaEngine

        assert model is not None and cache_dir is not None
        return LlamaEngine(model=model, model_name=model_name, cache_dir=cache_dir, **llama)  # type: ignore[arg-type]
    raise ValueError(f"unknown engine {kind!r}")
