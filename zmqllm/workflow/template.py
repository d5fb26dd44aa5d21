"""Prompt templates: `{name}` placeholders, `{{` and `}}` for literal braces.

A small regex renderer rather than `str.format`: format would also accept
`{0}`, `{a.b}`, `{a!r}` and format specs, and would read a JSON example in a
prompt as placeholders. Here a placeholder is only `{identifier}`, every other
brace must be doubled, and `fields` lists the names so that a spec is checked
for unknown variables before anything runs. Values are inserted once, never
re-read as templates, so an output holding braces is safe to pass on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["TemplateError", "NAME_PATTERN", "fields", "render"]

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""What a variable name (a step or stage name) may look like."""

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class TemplateError(ValueError):
    """A malformed template or a missing value; the message is one line."""


def _name(match: re.Match[str]) -> str | None:
    """The placeholder's name, None for an escaped brace; raises on anything else."""
    token = match.group(0)
    if token in ("{{", "}}"):
        return None
    inner = match.group(1)
    if inner is None:
        raise TemplateError(f"unmatched '{token}' at character {match.start() + 1} "
                            f"(write '{token * 2}' for a literal brace)")
    if not NAME_PATTERN.fullmatch(inner):
        raise TemplateError(f"bad placeholder '{token}' at character {match.start() + 1}: a name is "
                            f"letters, digits and '_' (write '{{{{' and '}}}}' for literal braces)")
    return inner


def fields(template: str) -> set[str]:
    """The variable names a template uses. Raises `TemplateError` if it is malformed."""
    return {name for match in _TOKEN.finditer(template) if (name := _name(match)) is not None}


def render(template: str, values: Mapping[str, str]) -> str:
    """The template with every `{name}` replaced by `values[name]` and `{{`/`}}` by one brace.

    Raises `TemplateError` for a malformed template or a name missing from `values`."""
    def substitute(match: re.Match[str]) -> str:
        name = _name(match)
        if name is None:
            return match.group(0)[0]
        try:
            return values[name]
        except KeyError:
            raise TemplateError(f"unknown variable {{{name}}}") from None

    return _TOKEN.sub(substitute, template)
