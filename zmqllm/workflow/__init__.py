"""Workflows: jobs of named LLM steps (fan-out, split, merges, review loops) run over the mesh.

Pure: `spec` validates a TOML spec, `plan.Run` is the state machine a daemon
drives with task results. Nothing here touches sockets, clocks or randomness.
"""

from zmqllm.workflow.merge import MERGES, concat, numbered, vote
from zmqllm.workflow.plan import PendingSplit, Run, TaskRequest, TaskResultLike
from zmqllm.workflow.spec import Stage, Step, TaskSettings, Workflow, WorkflowError, load_workflow, parse_workflow
from zmqllm.workflow.split import count_words, split_text
from zmqllm.workflow.template import TemplateError, fields, render

__all__ = [
    "Workflow", "Step", "Stage", "TaskSettings", "WorkflowError", "load_workflow", "parse_workflow",
    "Run", "TaskRequest", "TaskResultLike", "PendingSplit",
    "MERGES", "concat", "vote", "numbered", "split_text", "count_words",
    "TemplateError", "fields", "render",
]
