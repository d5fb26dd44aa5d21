"""What both llama engines (`LlamaEngine`, `BatchedLlamaEngine`) share before
they differ in how they generate: their llama.cpp settings, the name they
advertise, and the tokenizer of the loaded model."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zmqllm.engines.base import Engine
from zmqllm.engines.bundled import advertised_name
from zmqllm.engines.llama_text import count_tokens


class LlamaModelEngine(Engine):
    """Settings as given (`n_ctx` is the context per request, per slot when
    batching); `_llm`, the loaded `Llama`, is set by the subclass's load."""

    def __init__(self, *, model: str, model_name: str | None, cache_dir: Path, n_ctx: int, n_threads: int | None,
                 n_gpu_layers: int, n_batch: int, flash_attn: bool, chat_format: str | None, verbose: bool) -> None:
        self.spec = model
        self.cache_dir = Path(cache_dir).expanduser()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.n_batch = n_batch
        self.flash_attn = flash_attn
        self.chat_format = chat_format
        self.verbose = verbose
        self.models = (advertised_name(model, model_name),)
        self.ctx = n_ctx
        self.model_path: Path | None = None
        self.load_s = 0.0
        self._llm: Any = None
        self._render_chat: Callable[[list[dict[str, str]]], tuple[str, tuple[str, ...]]] | None = None

    def token_counter(self) -> Callable[[str], int] | None:
        llm = self._llm
        return None if llm is None else functools.partial(count_tokens, llm)


__all__ = ["LlamaModelEngine"]
