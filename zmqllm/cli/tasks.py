"""The verbs that run one task and stream it: submit (a completion) and chat."""

from __future__ import annotations

from typing import Any

import click

from zmqllm.cli.common import read_prompt, run_task, task_options

@click.command()
@click.argument("prompt")
@task_options
def submit(prompt: str, model: str | None, peer: str | None, max_tokens: int, stop: tuple[str, ...],
           task_id: str | None, no_failover: bool, deadline_s: float | None, detach: bool, connect: str,
           timeout: float, as_json: bool, **sampling: Any) -> None:
    """Run a completion on the mesh and stream its tokens to stdout.

    PROMPT is the text itself, @FILE, or - for stdin. Ctrl-C cancels the task.
    With --detach, only the task id is printed; the task runs on without you.

    \b
    Examples:
      zmqllm submit "The capital of France is" --max-tokens 32 --temperature 0
      zmqllm submit @prompt.txt --peer c --json
      ID=$(zmqllm submit @long.txt --detach) && zmqllm result "$ID"
    """
    run_task(connect, timeout, as_json, read_prompt(prompt), None, sampling, model=model, peer=peer,
              max_tokens=max_tokens, stop=stop, task_id=task_id, failover=not no_failover, deadline_s=deadline_s,
              detach=detach)


@click.command()
@click.argument("message")
@click.option("--system", help="a system message before yours")
@task_options
def chat(message: str, system: str | None, model: str | None, peer: str | None, max_tokens: int,
         stop: tuple[str, ...], task_id: str | None, no_failover: bool, deadline_s: float | None, detach: bool,
         connect: str, timeout: float, as_json: bool, **sampling: Any) -> None:
    """Chat: send MESSAGE (text, @FILE or -) as the user and stream the reply.

    The serving node renders it with the model's chat template (or the
    configured --chat-format; the bundled model uses the simple "plain" one).

    \b
    Example:
      zmqllm chat "Explain heartbeats in one sentence" --max-tokens 48
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": read_prompt(message)}]
    run_task(connect, timeout, as_json, "", messages, sampling, model=model, peer=peer, max_tokens=max_tokens,
              stop=stop, task_id=task_id, failover=not no_failover, deadline_s=deadline_s, detach=detach)
