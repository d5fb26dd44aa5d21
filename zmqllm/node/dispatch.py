"""Who may send what to a node's ROUTER, and which of the node's handlers takes it.

Everything arrives on one ROUTER: peers' DEALERs (their connection id is their node id) and clients
(any other id). A message's `src` is only what its sender claims, so the connection it came on is what
counts: a node speaks only for itself, on its own connection. Without this, a client could send `BYE`
in a healthy peer's name and make the node fail that peer's tasks over, or `ASSIGN` work as if it were
an origin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from zmqllm.core.protocol import Message

Sender = Literal["itself", "node", "peer", "anyone"]
"""itself: a node on its own connection, naming itself (`node_id` = `src` = connection id);
node: a node on its own connection (`src` = connection id), known or not (a SWIM join);
peer: a node this one knows, on its own connection; anyone: clients and nodes alike."""

Handler = Callable[[bytes, Message, bool], None]
"""Called with the connection id, the message, and whether it came from a known peer on its own connection."""

ROUTER_SENDERS: dict[str, tuple[Sender, str]] = {
    # membership (node → node)
    "HELLO": ("itself", "on_hello"),
    "HEARTBEAT": ("itself", "on_heartbeat"),
    "PEERS": ("peer", "on_peers"),
    "BYE": ("itself", "on_bye"),
    # queries (client → node)
    "GET_PEERS": ("anyone", "on_get_peers"),
    "GET_STATUS": ("anyone", "on_get_status"),
    "GET_TASKS": ("anyone", "on_get_tasks"),
    "GET_RESULT": ("anyone", "on_get_result"),
    # tasks
    "SUBMIT": ("anyone", "on_submit"),
    "CANCEL": ("anyone", "on_cancel"),  # a peer's reaches its assignment here; anyone else's, a task begun here
    "ASSIGN": ("peer", "on_assign"),
    "LOOKUP": ("peer", "on_lookup"),  # "do you hold this task or run?" (node/forward.py)
    # dashboards
    "SUBSCRIBE": ("anyone", "on_subscribe"),
    "UNSUBSCRIBE": ("anyone", "on_subscribe"),
    # workflow runs
    "RUN": ("anyone", "on_run"),
    "CANCEL_RUN": ("anyone", "on_cancel_run"),
    "GET_RUNS": ("anyone", "on_get_runs"),
    "REPLICATE": ("peer", "on_replicate"),  # a run's owner to its replica holder (node/replication.py)
    # SWIM membership (`membership = "swim"`, node/swim_membership.py); a joining node's SWIM_SYNC comes
    # before anyone lists it, and SWIM itself refuses what a stranger may not send
    "SWIM_PING": ("node", "on_swim"),
    "SWIM_PING_REQ": ("node", "on_swim"),
    "SWIM_ACK": ("node", "on_swim"),
    "SWIM_NACK": ("node", "on_swim"),
    "SWIM_GOSSIP": ("node", "on_swim"),
    "SWIM_SYNC": ("node", "on_swim"),
}
"""Every type a node's ROUTER accepts, in the order of docs/protocol.md's table; any other is refused."""


def router_rules(node: Any) -> dict[str, tuple[Sender, Handler]]:
    """The table bound to one node's handlers (its methods named in `ROUTER_SENDERS`)."""
    return {kind: (sender, getattr(node, name)) for kind, (sender, name) in ROUTER_SENDERS.items()}


def refusal(sender: Sender, message: Message, connection: bytes, is_peer: bool) -> str | None:
    """Why this connection may not send this message (None: it may)."""
    if sender == "anyone":
        return None
    if connection != message.src.encode():
        return f"{message.type} is accepted only from the connection of the node it comes from"
    if sender == "itself" and message.get("node_id") != message.src:
        return f"{message.type} must name its sender (node_id {message.get('node_id')!r} is not src)"
    if sender == "peer" and not is_peer:
        return f"{message.type} is accepted only from a node that has said HELLO"
    return None
