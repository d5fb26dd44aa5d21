"""The `?` screen: every key, read from the BINDINGS of the app and its panes so it never drifts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

HelpSection = tuple[str, Sequence[BindingType]]
CLOSE_HINT = "Esc, q or ? closes this"


def key_rows(bindings: Iterable[BindingType], display: Callable[[Binding], str]) -> list[tuple[str, str]]:
    """(keys, description) per action; the keys of one action joined ("← / h")."""
    keys: dict[str, list[str]] = {}
    descriptions: dict[str, str] = {}
    for binding in Binding.make_bindings(bindings):
        keys.setdefault(binding.action, []).append(display(binding))
        descriptions.setdefault(binding.action, binding.description or binding.action)
    return [(" / ".join(names), descriptions[action]) for action, names in keys.items()]


class HelpScreen(ModalScreen[None]):
    """Keys by pane; Esc, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close help")]

    def __init__(self, sections: Sequence[HelpSection]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
        table.add_column("key", style="bold cyan", no_wrap=True)
        table.add_column("does")
        for title, bindings in self.sections:
            table.add_row(f"[b]{title}[/b]", "")
            for keys, description in key_rows(bindings, self.app.get_key_display):
                table.add_row(keys, description)
        with VerticalScroll(id="help-box", classes="modal-box"):
            yield Label(f"Keys · {CLOSE_HINT}", classes="modal-title")
            yield Static(table, id="help-keys")
