"""The inject form: a task to run through the connected node.

The form only builds an `InjectRequest`; running it is the app's job
(through whatever submit function it was given), so the form is tested
without a mesh and the mesh code without a form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from zmqllm.client import DEFAULT_MAX_TOKENS
from zmqllm.workflow import WorkflowError, load_workflow


@dataclass(frozen=True)
class InjectRequest:
    """One task to submit: what `AsyncClient.submit` needs."""

    prompt: str
    model: str | None = None
    peer: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float | None = None
    seed: int | None = None
    workflow: str | None = None
    """A workflow spec file: run it with `prompt` as its input instead of submitting one task."""

    def params(self) -> dict[str, Any]:
        """Sampling params for SUBMIT: only those the user set."""
        params: dict[str, Any] = {}
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if self.seed is not None:
            params["seed"] = self.seed
        return params


class InjectScreen(ModalScreen[InjectRequest | None]):
    """Prompt, model, pinned peer, max tokens, temperature, seed, or a workflow file to run on the prompt;
    Enter or ctrl+s submits, Esc closes."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("ctrl+s", "submit", "Submit"),
    ]

    def __init__(self, models: list[str], peers: list[str]) -> None:
        super().__init__()
        self._models = models
        self._peers = peers

    def compose(self) -> ComposeResult:
        with Vertical(id="inject-form", classes="modal-box"):
            yield Label("Inject a task", classes="modal-title")
            with Grid(id="inject-grid"):
                yield Label("prompt")
                yield Input(placeholder="The capital of France is", id="prompt", compact=True)
                yield Label("model")
                yield Input(placeholder=self._hint(self._models, "the one the mesh serves"), id="model", compact=True)
                yield Label("peer")
                yield Input(placeholder=self._hint(self._peers, "least loaded"), id="peer", compact=True)
                yield Label("max tokens")
                yield Input(str(DEFAULT_MAX_TOKENS), type="integer", id="max_tokens", compact=True)
                yield Label("temperature")
                yield Input(placeholder="model default", type="number", id="temperature", compact=True)
                yield Label("seed")
                yield Input(placeholder="random", type="integer", id="seed", compact=True)
                yield Label("workflow")
                yield Input(placeholder="optional: a workflow .toml; the prompt is its input", id="workflow",
                            compact=True)
            yield Static("", id="inject-error")
            with Horizontal(classes="modal-buttons"):
                yield Button("Submit (^s)", variant="primary", id="submit", compact=True)
                yield Button("Cancel (esc)", id="close", compact=True)

    @staticmethod
    def _hint(options: list[str], default: str) -> str:
        return f"{default} · {', '.join(options[:4])}" if options else default

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "submit":
            self.action_submit()
        else:
            self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_submit(self) -> None:
        try:
            request = self._request()
        except ValueError as exc:
            self.query_one("#inject-error", Static).update(str(exc))
            return
        self.dismiss(request)

    def _value(self, field: str) -> str:
        return self.query_one(f"#{field}", Input).value.strip()

    def _request(self) -> InjectRequest:
        """The form as a request; ValueError naming the field that is wrong."""
        prompt = self.query_one("#prompt", Input).value
        if not prompt.strip():
            raise ValueError("prompt: write something for the model to continue")
        try:
            max_tokens = int(self._value("max_tokens") or DEFAULT_MAX_TOKENS)
            temperature = float(self._value("temperature")) if self._value("temperature") else None
            seed = int(self._value("seed")) if self._value("seed") else None
        except ValueError as exc:
            raise ValueError(f"a number is not valid: {exc}") from None
        if max_tokens < 1:
            raise ValueError("max tokens: must be at least 1")
        workflow = self._value("workflow") or None
        if workflow is not None:
            try:
                load_workflow(workflow)
            except WorkflowError as exc:
                raise ValueError(str(exc)) from None
        return InjectRequest(prompt, self._value("model") or None, self._value("peer") or None, max_tokens,
                             temperature, seed, workflow)

