"""What a task may ask for: the checks a SUBMIT and an ASSIGN both pass before any work starts. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from zmqllm.core.chat import check_messages
from zmqllm.core.generation import SAMPLING_KEYS
from zmqllm.core.tasks import TaskSpec

MAX_TOKENS_LIMIT = 1_000_000
MAX_DEADLINE_S = 7 * 24 * 3600.0
MAX_STOPS = 16
MAX_STOP_CHARS = 256
"""Stop sequences are matched after every token on the engine's worker, which all slots share: bounded."""


def validate_spec(spec: TaskSpec) -> str | None:
    """Why a SUBMIT (or an ASSIGN: an executor checks what an origin sends as well) cannot be run, or None."""
    if not spec.task_id or len(spec.task_id) > 128:
        return "task_id must be 1-128 characters"
    if not 1 <= spec.max_tokens <= MAX_TOKENS_LIMIT:
        return f"max_tokens must be between 1 and {MAX_TOKENS_LIMIT}, got {spec.max_tokens}"
    if spec.deadline_s is not None and not 0 < spec.deadline_s <= MAX_DEADLINE_S:
        return f"deadline_s must be between 0 and {MAX_DEADLINE_S:g} seconds, got {spec.deadline_s}"
    if len(spec.stop) > MAX_STOPS:
        return f"at most {MAX_STOPS} stop sequences, got {len(spec.stop)}"
    if any(not stop or len(stop) > MAX_STOP_CHARS for stop in spec.stop):
        return f"each stop sequence must be 1-{MAX_STOP_CHARS} characters"
    if spec.messages:
        if spec.prompt:
            return "a task is a completion (prompt) or a chat (messages), not both"
        problem = check_messages(spec.messages)
        if problem is not None:
            return problem
    for key, value in spec.params.items():
        kind = SAMPLING_KEYS.get(key)
        if kind is None:
            return f"unknown sampling parameter {key!r} (known: {', '.join(SAMPLING_KEYS)})"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            return f"sampling parameter {key!r} must be {'an integer' if kind is int else 'a number'}"
    return None


def resume_problem(max_tokens: int, resume_ids: Sequence[int], start_seq: int, whole: bool = False) -> str | None:
    """Why the tokens a task resumes after (an ASSIGN after a failover, a SUBMIT after a lost origin) do not fit
    it, or None. `start_seq` token events hold `resume_ids`, at least one id each. An executor needs something
    left to generate; an origin (`whole`) may be given every token (it then only has to end the task)."""
    if any(token < 0 for token in resume_ids):
        return "resume_ids must be token ids (>= 0)"
    if len(resume_ids) > max_tokens or (len(resume_ids) == max_tokens and not whole):
        return f"resume_ids holds {len(resume_ids)} tokens: nothing is left of max_tokens {max_tokens}"
    if not 0 <= start_seq <= min(max_tokens, len(resume_ids)):
        return f"start_seq must be between 0 and the {len(resume_ids)} resumed token ids (max_tokens {max_tokens})"
    return None

