"""`zmqllm submit`'s loop: stream one task's events to a terminal or as JSON Lines.

Ctrl-C once cancels the task on the mesh and still waits (bounded) for its
`done`, so nothing keeps running unseen; Ctrl-C twice leaves at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from zmqllm.client import AsyncClient

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def _summary(done: dict[str, Any]) -> str:
    usage, timings = done.get("usage", {}), done.get("timings", {})
    return (f"[{done.get('finish_reason')} on {done.get('executed_by') or '-'}: "
            f"{usage.get('completion_tokens', 0)} tokens, {timings.get('decode_tok_s', 0):.1f} tok/s, "
            f"ttft {timings.get('ttft_ms', 0):.0f} ms]")


@contextlib.contextmanager
def ctrl_c_cancels(cancel: Callable[[], Awaitable[None]]) -> Iterator[asyncio.Event]:
    """While inside: the first Ctrl-C runs `cancel` (on the mesh) and sets the yielded event, so the caller
    keeps reading until the stream's end; a second one cancels the calling task (leave at once)."""
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def on_sigint() -> None:
        if interrupted.is_set() and main_task is not None:
            main_task.cancel()
            return
        interrupted.set()
        loop.create_task(cancel())

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def stream_task(connect: str, timeout: float, as_json: bool, prompt: str, *, task_id: str | None,
                      **submit: Any) -> int:
    """Run one task (a completion, or a chat when `messages` is given) and print it."""
    task_id = task_id or uuid.uuid4().hex
    async with AsyncClient(connect, timeout) as client:
        if submit.get("detach"):
            return await _detached(client.submit(prompt, task_id=task_id, **submit), as_json)
        stream = client.submit(prompt, task_id=task_id, **submit)
        with ctrl_c_cancels(lambda: client.cancel(task_id)) as interrupted:
            try:
                return await _print_events(stream, as_json, interrupted)
            except asyncio.CancelledError:
                return EXIT_INTERRUPTED


async def _detached(stream: Any, as_json: bool) -> int:
    """`--detach`: the task id on stdout once a node accepted the task (the whole event with --json)."""
    async for event in stream:
        if event["type"] == "accepted":
            sys.stdout.write((json.dumps(event) if as_json else event["task_id"]) + "\n")
            if not as_json:
                print(f"task {event['task_id']} accepted by {event['origin']}: zmqllm result {event['task_id']}",
                      file=sys.stderr)
            return EXIT_OK
        if event["type"] == "error":
            if as_json:
                sys.stdout.write(json.dumps(event) + "\n")
            print(f"error: {event['code']}: {event['message']}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_FAILED


async def _print_events(stream: Any, as_json: bool, interrupted: asyncio.Event) -> int:
    async for event in stream:
        kind = event["type"]
        if as_json:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
        elif kind == "token":
            sys.stdout.write(event["text"])
            sys.stdout.flush()
        elif kind == "failover":
            what = "origin" if event.get("kind") == "origin" else "failover"  # the node we talk to, or its executor
            print(f"\n[{what} {event['from']} -> {event['to']} at token {event['at_seq']}: {event['reason']}]",
                  file=sys.stderr)
        elif kind == "done":
            sys.stdout.write("\n")
            print(_summary(event), file=sys.stderr)
        if kind == "error":
            print(f"error: {event['code']}: {event['message']}", file=sys.stderr)
            return EXIT_FAILED
        if kind == "done":
            return EXIT_INTERRUPTED if interrupted.is_set() else EXIT_OK
    return EXIT_FAILED
