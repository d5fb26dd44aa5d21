"""Template variables and the step graph they make: checked once, at load time.

A step depends on another exactly when one of its templates (or its `split`)
names that step, so the dependency graph is derived, never declared, and cannot
disagree with the prompts. Every name a template uses must resolve here; the
planner then renders without ever meeting an unknown variable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Sequence
from typing import TYPE_CHECKING

from zmqllm.workflow.template import TemplateError, fields
from zmqllm.workflow.values import Where, WorkflowError, show, suggest

if TYPE_CHECKING:
    from zmqllm.workflow.shapes import Step

__all__ = ["RESERVED", "link"]

RESERVED = frozenset({"input", "chunk", "chunk_index", "branches", "text", "round"})
"""Built-in variables; no step or stage may take these names."""
_WHERE_AVAILABLE = {
    "chunk": "in the prompt of a split step", "chunk_index": "in the prompt of a split step",
    "branches": "in a merge_prompt", "text": "in the stages of a loop step",
    "round": "in the stages of a loop step",
}


def link(source: str, steps: Sequence[Step]) -> tuple[Step, ...]:
    """The steps with `needs` filled in. Raises `WorkflowError` for an unknown
    variable, a self-reference or a cycle."""
    names = [step.name for step in steps]
    linked, first_key = [], {}
    for step in steps:
        at = Where(source, f"step '{step.name}'")
        used: dict[str, str] = {}  # step name -> the key that first uses it
        for where, key, template, extra, hints in _templates(at, step, names):
            for name in _check(where, key, template, extra, hints, names, step.name):
                used.setdefault(name, key)
        if step.split is not None:
            if step.split == step.name:
                raise at.error("split", "a step cannot split its own output")
            if step.split != "input" and step.split not in names:
                raise at.error("split", f"must be 'input' or the name of another step, got "
                                        f"{show(step.split)}{suggest(step.split, ['input', *names])}")
            if step.split != "input":
                used.setdefault(step.split, "split")
        first_key[step.name] = used
        linked.append(dataclasses.replace(step, needs=tuple(n for n in names if n in used)))
    _check_acyclic(source, linked, first_key)
    return tuple(linked)


_Template = tuple[Where, str, str, set[str], dict[str, str]]


def _templates(at: Where, step: Step, step_names: Collection[str]) -> Iterator[_Template]:
    """(place, key, template, extra variables, hints for names not available) per template."""
    if step.kind == "loop":
        yield at, "text", step.text, set(), {}
        stage_names = [stage.name for stage in step.stages]
        for index, stage in enumerate(step.stages):
            stage_at = at.inside(f"stage '{stage.name}'")
            if stage.name in step_names:
                raise stage_at.error("name", f"'{stage.name}' is also a step name; stage and step "
                                             f"outputs share the {{name}} variables")
            hints = {later: f"stage '{later}' runs after this one in a round, so {{{later}}} "
                            f"is not available here" for later in stage_names[index + 1:]}
            hints[stage.name] = f"a stage cannot use its own output {{{stage.name}}}"
            yield stage_at, "prompt", stage.prompt, {"text", "round", *stage_names[:index]}, hints
        if not any("text" in fields(stage.prompt) for stage in step.stages):
            raise at.error("stages", "no stage uses {text}, so every round would repeat the first")
        return
    extra = {"chunk", "chunk_index"} if step.kind == "split" else set()
    yield at, "prompt", step.prompt, extra, {}
    if step.kind == "split" and "chunk" not in _fields(at, "prompt", step.prompt):
        raise at.error("prompt", "a split step's prompt must use {chunk}")
    if step.merge_prompt is not None:
        yield at, "merge_prompt", step.merge_prompt, {"branches"}, {}
        if "branches" not in _fields(at, "merge_prompt", step.merge_prompt):
            raise at.error("merge_prompt", "must use {branches} (the numbered branch outputs)")


def _fields(at: Where, key: str, template: str) -> set[str]:
    try:
        return fields(template)
    except TemplateError as exc:
        raise at.error(key, str(exc)) from None


def _check(at: Where, key: str, template: str, extra: set[str], hints: dict[str, str],
           step_names: Collection[str], own: str) -> list[str]:
    """The step names the template uses, in order of appearance; raises for any unknown name."""
    used = sorted(_fields(at, key, template), key=lambda name: template.find("{" + name + "}"))
    known = {"input", *extra, *step_names} - {own}
    for name in used:
        if name == own:
            raise at.error(key, f"a step cannot use its own output {{{name}}}")
        if name in known:
            continue
        if name in hints:
            raise at.error(key, hints[name])
        if name in _WHERE_AVAILABLE:
            raise at.error(key, f"{{{name}}} is only available {_WHERE_AVAILABLE[name]}")
        raise at.error(key, f"unknown variable {{{name}}}{suggest(name, known, quote='{')}")
    return [name for name in used if name in step_names]


def _check_acyclic(source: str, steps: Sequence[Step], first_key: dict[str, dict[str, str]]) -> None:
    needs = {step.name: step.needs for step in steps}
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> None:
        path.append(name)
        for dependency in needs[name]:
            if dependency in path:
                cycle = path[path.index(dependency):] + [dependency]
                key = first_key[cycle[0]][cycle[1]]
                raise WorkflowError(f"{source}: step '{cycle[0]}': key '{key}': cycle "
                                    f"{' -> '.join(cycle)} (each step uses the output of the next)")
            if dependency not in done:
                visit(dependency)
        path.pop()
        done.add(name)

    for step in steps:
        if step.name not in done:
            visit(step.name)
