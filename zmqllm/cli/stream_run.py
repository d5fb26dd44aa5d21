"""`zmqllm run`'s loop: follow one workflow run, as live progress on a terminal or as JSON Lines.

On a terminal, each task's start and end is a line on stderr, tokens so far of
the running tasks a status line rewritten in place, and the final output goes
to stdout (so `zmqllm run ... > out.txt` keeps only the answer). Ctrl-C once
cancels the run on its orchestrator (every running step stops) and waits,
bounded, for its end; twice leaves at once. The run itself belongs to the
orchestrating node: losing this client does not stop it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import IO, Any

from zmqllm.client import AsyncClient
from zmqllm.cli.stream_task import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, ctrl_c_cancels


async def follow_run(connect: str, timeout: float, as_json: bool, *, run_id: str, spec: str | None = None,
                     input: str = "", source: str = "workflow", resume: bool = False, attach: bool = False) -> int:
    """Start (or resume, or attach to) a run and print it until it ends; returns the exit code."""
    async with AsyncClient(connect, timeout) as client:
        stream = client.run(spec, input, source=source, run_id=run_id, resume=resume, attach=attach)
        printer = _Printer(sys.stdout, sys.stderr, as_json)
        with ctrl_c_cancels(lambda: client.cancel_run(run_id)):
            try:
                async for event in stream:
                    printer.show(event)
                    if event.get("type") == "error":
                        return EXIT_FAILED
                    if event.get("type") == "done":
                        return EXIT_INTERRUPTED if event.get("finish_reason") == "cancelled" else EXIT_OK
                return EXIT_FAILED
            except asyncio.CancelledError:
                return EXIT_INTERRUPTED
            finally:
                printer.clear_status()


class _Printer:
    """Renders run events for a person (stderr progress, stdout output) or as JSON Lines."""

    def __init__(self, out: IO[str], err: IO[str], as_json: bool) -> None:
        self.out, self.err, self.as_json = out, err, as_json
        self.live = err.isatty()
        self._status = False

    def show(self, event: dict[str, Any]) -> None:
        if self.as_json:
            self.out.write(json.dumps(event) + "\n")
            self.out.flush()
            return
        kind = event.get("type")
        if kind == "progress":
            if self.live:
                parts = [f"{t['key']}@{t.get('peer') or '?'} {t['tokens']} tok" for t in event.get("tasks", [])]
                self._write_status("  running: " + ", ".join(parts))
            return
        self.clear_status()
        if kind == "run":
            how = ("adopted from " + event["adopted_from"] if event.get("adopted_from") else
                   "resumed" if event.get("resumed") else "attached" if event.get("attached") else "started")
            reused = event.get("from_journal") or []
            where = "its replica" if event.get("adopted_from") else "the journal"
            extra = f"; {len(reused)} task(s) from {where}" if reused else ""
            self._line(f"run {event['run_id']} ({event.get('workflow')}) {how} on {event.get('orchestrator')}{extra}")
        elif kind == "failover":
            self._line(f"[orchestrator lost ({event.get('reason')}): following the run from {event.get('to')}]")
        elif kind == "task":
            self._line(_task_line(event))
        elif kind == "done":
            for failure in event.get("failures", []):
                self._line(f"optional step failed: {failure}")
            if event.get("finish_reason") == "cancelled":
                self._line(f"run {event['run_id']} cancelled")
            else:
                self.out.write((event.get("output") or "") + "\n")
                self.out.flush()
                tasks = event.get("tasks", [])
                peers = sorted({t.get("executed_by") for t in tasks if t.get("executed_by")})
                self._line(f"[run {event['run_id']} done: {len(tasks)} tasks on {', '.join(peers) or '-'}]")
        elif kind == "error":
            self._line(f"error: {event.get('code')}: {event.get('message')}")
            if "zmqllm run --" not in str(event.get("message")):  # unless it already says what to do
                self._line(f"resume with: zmqllm run --resume {event.get('run_id')}")

    def _line(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def _write_status(self, text: str) -> None:
        self.err.write("\r\x1b[K" + text[:200])
        self.err.flush()
        self._status = True

    def clear_status(self) -> None:
        if self._status:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self._status = False


def _task_line(event: dict[str, Any]) -> str:
    state, key = event.get("state"), event.get("key")
    if state == "started":
        retry = f" (attempt {event['attempt']})" if event.get("attempt", 1) > 1 else ""
        return f"  > {key} on {event.get('peer')}{retry}"
    if state == "done":
        elapsed = (event.get("ended") or 0) - (event.get("started") or 0)
        return f"  ok {key} on {event.get('executed_by')}: {event.get('tokens')} tokens, {elapsed:.1f} s"
    if state == "failover":
        return f"  ~ {key}: {event.get('from')} -> {event.get('peer')} ({event.get('reason')})"
    return f"  x {key} on {event.get('peer') or '-'}: {event.get('error')}"
