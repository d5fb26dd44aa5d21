"""Text around llama.cpp shared by both llama engines: how chat messages become a prompt (and a chat
request a completion), and how a text's tokens are counted (prompts are tokenised in `llama_api`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

from zmqllm.core.chat import PLAIN, PLAIN_STOPS, render_plain
from zmqllm.engines.base import EngineError, GenerationRequest
from zmqllm.engines.bundled import is_bundled

ChatRenderer = Callable[[list[dict[str, str]]], tuple[str, tuple[str, ...]]]


def chat_renderer(spec: str, chat_format: str | None, llm: Any) -> ChatRenderer | None:
    """How chat messages become a prompt: `chat_format` "plain" (the default for the bundled base model), a
    Jinja template file, or the GGUF's own template; None when there is none (chat requests are then refused)."""
    fmt = chat_format or (PLAIN if is_bundled(spec) else None)
    if fmt == PLAIN:
        return lambda messages: (render_plain(messages), PLAIN_STOPS)
    if fmt is not None:
        template_path = Path(fmt).expanduser()
        if not template_path.is_file():
            raise EngineError("engine_failed", f"chat_format {fmt!r} is neither 'plain' nor a template file")
        template = template_path.read_text()
    else:
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "replace")
    eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace")
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    def render(messages: list[dict[str, str]]) -> tuple[str, tuple[str, ...]]:
        prompt = formatter(messages=messages).prompt
        return prompt.removeprefix(bos), (eos,) if eos else ()  # the tokenizer adds BOS itself

    return render


def render_chat_request(render: ChatRenderer | None, model: str, request: GenerationRequest) -> GenerationRequest:
    """A chat request as the completion the model runs: its messages rendered, the template's stops added."""
    if render is None:
        raise EngineError("bad_request", f"model {model} has no chat template: start its daemon "
                          "with --chat-format plain (or a Jinja template file), or send a plain prompt")
    try:
        prompt, template_stops = render(list(request.messages))
    except Exception as exc:  # a template that raises on these messages
        raise EngineError("bad_request", f"chat template failed: {exc}") from None
    return dataclasses.replace(request, prompt=prompt, messages=(), stop=request.stop + template_stops)


def count_tokens(llm: Any, text: str) -> int:
    """Tokens of `text` as a prompt continuation (no BOS). llama_tokenize only
    reads the vocabulary, so this is safe beside a running decode."""
    return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


def check_fits(n_prompt: int, resume: Seq[int], limit: int, n_vocab: int) -> None:
    """Raise `EngineError("bad_request", ...)` unless a prompt of `n_prompt`
    tokens and the replayed `resume` ids fit a `limit`-token context."""
    if n_prompt == 0:
        raise EngineError("bad_request", "empty prompt (and the model adds no BOS token)")
    if n_prompt >= limit:
        raise EngineError("bad_request", f"prompt is {n_prompt} tokens; the context window is {limit} "
                          f"(at most {limit - 1} prompt tokens)")
    if n_prompt + len(resume) >= limit:
        raise EngineError("bad_request", f"prompt and resumed tokens ({n_prompt} + {len(resume)}) fill the "
                          f"{limit}-token context window")
    bad = [t for t in resume if not 0 <= t < n_vocab]
    if bad:  # one bad id would fail the whole batch's decode, other requests included
        raise EngineError("bad_request", f"resume_ids holds {bad[0]}, not a token of this model (0..{n_vocab - 1})")
