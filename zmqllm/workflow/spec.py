"""Workflow specs: a TOML file parsed and validated into frozen dataclasses.

Everything that can be wrong with a spec is found here, before any task runs:
unknown or misspelt keys, bad types and ranges, steps mixing kinds, unknown
template variables, cycles. Each `WorkflowError` is one line naming the file,
the step (and stage) and the key, so a user can fix it without reading code.
Only what depends on the input (how many chunks a split makes) is left to the
planner. The format is documented in docs/workflows.md.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zmqllm.workflow import graph
from zmqllm.workflow.shapes import Stage, Step, StepKind
from zmqllm.workflow.merge import DEFAULT_SEPARATOR, MERGES
from zmqllm.workflow.settings import SETTINGS_KEYS, TaskSettings, parse_settings
from zmqllm.workflow.template import NAME_PATTERN
from zmqllm.workflow.values import Where, WorkflowError, show, suggest

__all__ = [
    "WorkflowError", "Workflow", "Step", "Stage", "TaskSettings", "StepKind",
    "load_workflow", "parse_workflow", "DEFAULT_MAX_FAN_OUT", "MAX_FAN_OUT_CAP", "MAX_ROUNDS_CAP",
]

DEFAULT_MAX_FAN_OUT = 16
MAX_FAN_OUT_CAP = 64
MAX_ROUNDS_CAP = 20

_TOP_KEYS = ("name", "description", "output", "max_fan_out", "defaults", "steps")
_FAN_KEYS = ("fan_out", "distinct_peers", "merge", "merge_prompt", "merge_settings", "separator")
_SPLIT_KEYS = ("split", "chunk_chars", "chunk_tokens")
_LOOP_KEYS = ("text", "stages", "max_rounds", "until", "until_stage")
_STEP_KEYS = ("name", "optional", "prompt", *_FAN_KEYS, *_SPLIT_KEYS, *_LOOP_KEYS, *SETTINGS_KEYS)
_STAGE_KEYS = ("name", "prompt", *SETTINGS_KEYS)


@dataclass(frozen=True)
class Workflow:
    """A validated spec; immutable so a run can share it."""

    name: str
    steps: tuple[Step, ...]
    output: str
    description: str = ""
    max_fan_out: int = DEFAULT_MAX_FAN_OUT
    source: str = "<workflow>"

    def step(self, name: str) -> Step:
        """The step called `name`; raises KeyError if there is none."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"no step named {name!r}")


def load_workflow(path: str | os.PathLike) -> Workflow:
    """Read and validate a spec file. Raises `WorkflowError`."""
    shown = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise WorkflowError(f"{shown}: cannot read workflow: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WorkflowError(f"{shown}: invalid TOML: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    return parse_workflow(text, shown)


def parse_workflow(text_or_mapping: str | Mapping[str, Any], source: str) -> Workflow:
    """Validate a spec given as TOML text or an already parsed table. Raises `WorkflowError`."""
    doc: Mapping[str, Any]
    if isinstance(text_or_mapping, str):
        try:
            doc = tomllib.loads(text_or_mapping)
        except tomllib.TOMLDecodeError as exc:
            raise WorkflowError(f"{source}: invalid TOML: {' '.join(str(exc).split())}") from None
    else:
        doc = text_or_mapping
    top = Where(source)
    top.check_keys(doc, _TOP_KEYS)
    max_fan_out = top.integer(doc, "max_fan_out", DEFAULT_MAX_FAN_OUT, 1, MAX_FAN_OUT_CAP,
                              f"between 1 and {MAX_FAN_OUT_CAP} (the hard cap)")
    if max_fan_out is None:  # it has a default: only a bug gets here
        raise WorkflowError(f"{source}: max_fan_out could not be read")
    defaults_at = Where(source, "[defaults]")
    defaults_table = top.table(doc, "defaults")
    defaults_at.check_keys(defaults_table, SETTINGS_KEYS)
    defaults = parse_settings(defaults_at, defaults_table, TaskSettings())
    tables = top.tables(doc, "steps")
    if not tables:
        raise top.error("steps", "at least one [[steps]] table is required")
    steps = _parse_steps(source, tables, defaults, max_fan_out)
    names = [step.name for step in steps]
    output = top.string(doc, "output", names[-1], empty_ok=False)
    if output not in names:
        raise top.error("output", f"no step named '{output}'{suggest(str(output), names)}")
    steps = graph.link(source, steps)
    return Workflow(
        name=top.string(doc, "name", Path(source).stem or "workflow", empty_ok=False) or "workflow",
        steps=steps, output=str(output), description=top.string(doc, "description", "") or "",
        max_fan_out=max_fan_out, source=source,
    )


def _name(at: Where, table: Mapping[str, Any], what: str) -> str:
    name = at.string(table, "name", required=True)
    if name is None:  # required: `at.string` raised already unless it has a bug
        raise at.error("name", f"{what} needs a name")
    if not NAME_PATTERN.fullmatch(name):
        raise at.error("name", f"{what} name must be letters, digits and '_', not starting with a digit "
                               f"(it is a template variable), got {show(name)}")
    if name in graph.RESERVED:
        raise at.error("name", f"'{name}' is a built-in template variable; choose another {what} name")
    return name


def _parse_steps(source: str, tables: list[Mapping[str, Any]], defaults: TaskSettings,
                 max_fan_out: int) -> tuple[Step, ...]:
    steps: list[Step] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables, 1):
        at = Where(source, f"step #{index}")
        at.check_keys(table, _STEP_KEYS)
        name = _name(at, table, "step")
        at = Where(source, f"step '{name}'")
        if name in seen:
            raise at.error("name", f"duplicate step name (steps #{seen[name]} and #{index})")
        seen[name] = index
        steps.append(_parse_step(at, name, table, defaults, max_fan_out))
    return tuple(steps)


def _kind(at: Where, table: Mapping[str, Any]) -> StepKind:
    """Which kind the keys make the step, or an error naming the first key that does not fit."""
    kind: StepKind = ("loop" if "stages" in table else "split" if "split" in table
                      else "fan_out" if "fan_out" in table else "plain")
    for key in table:
        if kind == "loop" and key in ("prompt", *_FAN_KEYS, *_SPLIT_KEYS):
            raise at.error(key, "does not apply to a loop step (its prompts are in [[steps.stages]])")
        if kind != "loop" and key in _LOOP_KEYS:
            raise at.error(key, "applies only to a loop step, which has [[steps.stages]]")
        if kind == "split" and key == "fan_out":
            raise at.error(key, "cannot be combined with 'split' (a split step runs one branch per chunk)")
        if kind != "split" and key in ("chunk_chars", "chunk_tokens"):
            raise at.error(key, "applies only to a split step, which has 'split'")
        if kind == "plain" and key in _FAN_KEYS:
            raise at.error(key, "applies only to a fan_out or split step")
    return kind


def _parse_step(at: Where, name: str, table: Mapping[str, Any], defaults: TaskSettings,
                max_fan_out: int) -> Step:
    kind = _kind(at, table)
    settings = parse_settings(at, table, defaults)
    common: dict[str, Any] = dict(name=name, kind=kind, settings=settings,
                                  optional=at.boolean(table, "optional", False))
    if kind == "loop":
        return _parse_loop(at, table, settings, common)
    common["prompt"] = at.string(table, "prompt", required=True, empty_ok=False)
    if kind == "plain":
        return Step(**common)
    if kind == "fan_out":
        common["fan_out"] = at.integer(table, "fan_out", 1, 1, max_fan_out,
                                       f"between 1 and max_fan_out ({max_fan_out})")
    else:
        common.update(_parse_split(at, table))
    distinct = at.boolean(table, "distinct_peers", False)
    if distinct and settings.peer is not None:
        raise at.error("distinct_peers", f"cannot be combined with 'peer' (every branch is pinned to "
                                         f"'{settings.peer}')")
    return Step(**common, distinct_peers=distinct, **_parse_merge(at, table, settings, common))


def _parse_split(at: Where, table: Mapping[str, Any]) -> dict[str, Any]:
    split = at.string(table, "split", required=True, empty_ok=False)
    if "chunk_chars" in table and "chunk_tokens" in table:
        raise at.error("chunk_tokens", "cannot be combined with 'chunk_chars' (give exactly one)")
    if "chunk_chars" not in table and "chunk_tokens" not in table:
        raise at.error("chunk_chars", "required for a split step (or 'chunk_tokens')")
    return dict(split=split, chunk_chars=at.integer(table, "chunk_chars", None, 1),
                chunk_tokens=at.integer(table, "chunk_tokens", None, 1))


def _parse_merge(at: Where, table: Mapping[str, Any], settings: TaskSettings,
                 common: Mapping[str, Any]) -> dict[str, Any]:
    merge = at.string(table, "merge")
    if merge is None and (common["kind"] == "split" or common.get("fan_out", 1) > 1):
        why = "a split step" if common["kind"] == "split" else "fan_out > 1"
        raise at.error("merge", f"required for {why}: one of {', '.join(MERGES)}")
    if merge is not None and merge not in MERGES:
        raise at.error("merge", f"must be one of {', '.join(MERGES)}, got {show(merge)}{suggest(merge, MERGES)}")
    for key, needs in (("merge_prompt", "llm"), ("merge_settings", "llm"), ("separator", "concat")):
        if key in table and merge != needs:
            raise at.error(key, f"applies only to merge = '{needs}'")
    if merge == "llm" and "merge_prompt" not in table:
        raise at.error("merge_prompt", "required when merge = 'llm' (use {branches} for the outputs)")
    merge_at = at.inside("[merge_settings]")
    merge_table = at.table(table, "merge_settings")
    merge_at.check_keys(merge_table, SETTINGS_KEYS)
    return dict(
        merge=merge, merge_prompt=at.string(table, "merge_prompt", empty_ok=False),
        merge_settings=parse_settings(merge_at, merge_table, settings) if merge == "llm" else None,
        separator=at.string(table, "separator", DEFAULT_SEPARATOR),
    )


def _parse_loop(at: Where, table: Mapping[str, Any], settings: TaskSettings,
                common: dict[str, Any]) -> Step:
    text = at.string(table, "text", required=True)
    if "max_rounds" not in table:
        raise at.error("max_rounds", f"required for a loop step (1 to {MAX_ROUNDS_CAP})")
    max_rounds = at.integer(table, "max_rounds", 1, 1, MAX_ROUNDS_CAP)
    stage_tables = at.tables(table, "stages")
    if not stage_tables:
        raise at.error("stages", "a loop step needs at least one [[steps.stages]] table")
    stages: list[Stage] = []
    for index, stage_table in enumerate(stage_tables, 1):
        stage_at = at.inside(f"stage #{index}")
        stage_at.check_keys(stage_table, _STAGE_KEYS)
        stage_name = _name(stage_at, stage_table, "stage")
        stage_at = at.inside(f"stage '{stage_name}'")
        if any(stage.name == stage_name for stage in stages):
            raise stage_at.error("name", "duplicate stage name in this loop")
        prompt = stage_at.string(stage_table, "prompt", required=True, empty_ok=False)
        stages.append(Stage(stage_name, str(prompt), parse_settings(stage_at, stage_table, settings)))
    until = None
    pattern = at.string(table, "until", empty_ok=False)
    if pattern is not None:
        try:
            until = re.compile(pattern)
        except re.error as exc:
            raise at.error("until", f"bad regular expression: {exc}") from None
    until_stage = at.string(table, "until_stage")
    stage_names = [stage.name for stage in stages]
    if until_stage is not None and until is None:
        raise at.error("until_stage", "needs 'until' (the pattern that ends the loop)")
    if until_stage is not None and until_stage not in stage_names:
        raise at.error("until_stage", f"no stage named '{until_stage}' in this loop"
                                      f"{suggest(until_stage, stage_names)}")
    if until is not None and until_stage is None:
        until_stage = stage_names[0]
    return Step(**common, text=str(text), stages=tuple(stages), max_rounds=max_rounds or 1,
                until=until, until_stage=until_stage)
