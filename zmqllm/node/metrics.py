"""A node's `/metrics`: its counters (`core/metrics.py`), its journal's writes and its present state (queue,
slots, tasks in flight, peers by state), rendered by prometheus_client when scraped."""

from __future__ import annotations

import platform
from collections import Counter
from collections.abc import Iterator
from importlib import metadata

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from zmqllm import __version__
from zmqllm.http.metrics import HttpStats, counter, histogram
from zmqllm.node.node import Node


class NodeCollector(Collector):
    """Reads one node at scrape time (on its loop: aiohttp serves /metrics there)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.build = {"version": __version__, "python": platform.python_version(), "llama_cpp": _llama_version()}

    def collect(self) -> Iterator[Metric]:
        node, stats = self.node, self.node.stats
        yield InfoMetricFamily("zmqllm_build", "zmqllm, Python and llama-cpp-python versions", value=self.build)
        yield counter("zmqllm_messages_received", "mesh messages received, by type", stats.messages_in, "type")
        yield counter("zmqllm_received_bytes", "mesh bytes received, by message type", stats.bytes_in, "type")
        yield counter("zmqllm_messages_sent", "mesh messages sent, by type", stats.messages_out, "type")
        yield counter("zmqllm_sent_bytes", "mesh bytes sent, by message type", stats.bytes_out, "type")
        yield counter("zmqllm_frames_dropped", "malformed or misaddressed frames dropped", node.dropped_frames)
        yield counter("zmqllm_messages_refused", "messages refused by the sender rules", node.refused_messages)
        yield counter("zmqllm_tasks", "tasks originated here that ended, by finish reason or error code",
                      stats.tasks, "outcome")
        yield counter("zmqllm_prompt_tokens", "prompt tokens of tasks originated here, by model",
                      stats.prompt_tokens, "model")
        yield counter("zmqllm_cached_prompt_tokens", "prompt tokens of tasks originated here that a cache held "
                      "(not computed again), by model", stats.cached_prompt_tokens, "model")
        yield counter("zmqllm_generated_tokens", "tokens generated for tasks originated here, by model",
                      stats.generated_tokens, "model")
        yield counter("zmqllm_failovers", "tasks moved to another executor mid-way", stats.failovers)
        yield counter("zmqllm_resumed_tokens", "tokens already delivered when a task failed over",
                      stats.resumed_tokens)
        yield counter("zmqllm_journal_writes", "journal records written",
                      node.journal.writes if node.journal is not None else 0)
        yield histogram("zmqllm_time_to_first_token_seconds", "from a task's acceptance to its first token",
                        stats.first_token_s)
        yield histogram("zmqllm_inter_token_seconds", "between two tokens of a task at its origin",
                        stats.token_gap_s)
        yield histogram("zmqllm_task_duration_seconds", "from a task's acceptance to its end", stats.task_s)
        load = node.load()
        for name, doc, value in (("zmqllm_tasks_in_flight", "tasks originated here not ended", node.origin.in_flight()),
                                 ("zmqllm_queue_depth", "tasks waiting for a slot of this node", load.queued),
                                 ("zmqllm_slots_busy", "this node's slots generating", load.active),
                                 ("zmqllm_slots", "this node's slots", load.slots)):
            yield GaugeMetricFamily(name, doc, value=value)
        peers = GaugeMetricFamily("zmqllm_peers", "nodes of the mesh this node knows, by state", labels=["state"])
        table = node.table
        states = Counter(row["state"] for row in table.rows(node.clock(), load)) if table is not None else Counter()
        for state in ("alive", "suspect", "dead", "left"):
            peers.add_metric([state], states.get(state, 0))
        yield peers


def registry_for(node: Node, http: HttpStats) -> CollectorRegistry:
    """One node's registry (not prometheus_client's global one: tests run several nodes in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    registry.register(http)
    return registry


def _llama_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return ""
