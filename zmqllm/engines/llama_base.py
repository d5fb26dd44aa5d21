"""What both llama engines (`LlamaEngine`, `BatchedLlamaEngine`) share before
they differ in how they generate: their llama.cpp settings, the name they
advertise, the tokenizer of the loaded model, and chat templates rendered off
the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zmqllm.engines.base import Engine, EngineError, GenerationRequest
from zmqllm.engines.bundled import advertised_name
from zmqllm.engines.llama_text import ChatRenderer, count_tokens, render_chat_request


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
        self._render_chat: ChatRenderer | None = None
        self._tokenizer_lock = threading.Lock()
        """Held while counting tokens on another thread and while freeing the model, so a count never reads a
        freed vocabulary (a workflow split may still be counting when the daemon stops)."""

    def token_counter(self) -> Callable[[str], int] | None:
        """Counts with the loaded model's tokenizer, from any thread (a workflow split runs on a worker);
        raises `EngineError` once the model is freed."""
        return None if self._llm is None else self._count_tokens

    def _count_tokens(self, text: str) -> int:
        with self._tokenizer_lock:
            if self._llm is None:
                raise EngineError("engine_failed", "model is closed")
            return count_tokens(self._llm, text)

    def _take_model(self) -> Any:
        """The loaded `Llama`, now forgotten here (None if none): the caller frees it. Waits for a running count."""
        with self._tokenizer_lock:
            llm, self._llm = self._llm, None
        return llm

    async def _as_completion(self, request: GenerationRequest) -> GenerationRequest:
        """A chat request rendered through the chat template on a worker thread (a long chat's template
        would otherwise run on the event loop); a plain request as it is."""
        if not request.messages:
            return request
        return await asyncio.to_thread(render_chat_request, self._render_chat, self.models[0], request)


__all__ = ["LlamaModelEngine"]
