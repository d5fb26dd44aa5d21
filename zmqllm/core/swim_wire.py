"""SWIM's messages on the wire: the table of types and fields, their bounds, and the checks that refuse anything
else with `Malformed` before the state machine (`core/swim.py`) sees it.

The types, in the order of docs/membership.md's table: `SWIM_PING`, `SWIM_PING_REQ`, `SWIM_ACK`, `SWIM_NACK`,
`SWIM_GOSSIP`, `SWIM_SYNC`. Each carries updates (`Update`: what one node says about another) under short keys,
since updates are most of SWIM's bytes. `to_fields` / `from_fields` turn a message into a msgpack-ready map and
back; the envelope (`v`, `t`, `id`, `src`) is the protocol's (docs/protocol.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Union

Status = Literal["alive", "suspect", "dead", "left"]
STATUSES: tuple[Status, ...] = ("alive", "suspect", "dead", "left")
_STATUS_SET = frozenset(STATUSES)
UP = frozenset({"alive", "suspect"})
"""States in which a member may be given work and is probed."""

MAX_NODE_ID = 64
"""Characters in a node id (the protocol's cap on `node_id`)."""
MAX_ADDRESS = 256
"""Characters in an address (the protocol's cap on `endpoint`)."""
MAX_META_BYTES = 512
"""A node's metadata blob: models and load fit; anything bigger belongs in a direct request."""
MAX_PIGGYBACK = 64
"""Updates a received message may carry (senders pack at most `SwimConfig.max_piggyback`)."""
MAX_SYNC_STATES = 8192
"""Members a push-pull may list, so also the most members a table holds (`SwimConfig.max_members`): a whole
table must fit one push-pull. 8,192 rows of the largest update (id, address, meta: ≈ 860 bytes) stay under the
protocol's 8 MiB frame."""
MAX_NUMBER = 2**32 - 1
"""Incarnations, versions and sequence numbers fit msgpack's uint32."""
MAX_INCARNATION_STEP = 1 << 16
"""A refutation adds 1; a claim this far beyond what we know of a node is forged or corrupt, and refused."""


@dataclass(frozen=True, slots=True)
class Update:
    """What one node says about another (or itself): piggybacked, gossiped, or listed in a push-pull."""

    node: str
    status: Status
    incarnation: int
    source: str = ""
    """Who says so: the accuser of a suspect or dead update; the node itself for alive and left."""
    address: str = ""
    """Alive updates: where the node listens."""
    meta_version: int = 0
    meta: bytes = b""


@dataclass(frozen=True, slots=True)
class Ping:
    """A probe: answer with `Ack(seq)` if you are `target`."""

    KIND: ClassVar[str] = "SWIM_PING"
    seq: int
    target: str
    piggyback: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """Probe `target` for me; forward its ack as `Ack(seq)`, or send `Nack(seq)` if none comes in time."""

    KIND: ClassVar[str] = "SWIM_PING_REQ"
    seq: int
    target: str
    piggyback: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    KIND: ClassVar[str] = "SWIM_ACK"
    seq: int
    piggyback: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """A helper heard nothing from the target: proof that the helper, at least, is reachable (Lifeguard)."""

    KIND: ClassVar[str] = "SWIM_NACK"
    seq: int


@dataclass(frozen=True, slots=True)
class Gossip:
    KIND: ClassVar[str] = "SWIM_GOSSIP"
    piggyback: tuple[Update, ...]


@dataclass(frozen=True, slots=True)
class Sync:
    """Push-pull: a digest of the sender's table, its full state when it has reason to send it, and whether
    the sender wants the receiver's full state back."""

    KIND: ClassVar[str] = "SWIM_SYNC"
    digest: int
    states: tuple[Update, ...] = ()
    reply: bool = False


Message = Union[Ping, PingReq, Ack, Nack, Gossip, Sync]
MESSAGE_TYPES: dict[str, type] = {kind.KIND: kind for kind in (Ping, PingReq, Ack, Nack, Gossip, Sync)}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to send. `address` is empty for a reply to a node not (yet) in the table: send it back on
    the connection the request came from. `to` is empty for a seed whose id is not known yet."""

    to: str
    address: str
    message: Message


class Malformed(ValueError):
    """A message that is not a valid SWIM message (what and why in the text)."""


def _number(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_NUMBER


def _text(value: Any, limit: int, empty: bool = True) -> bool:
    return isinstance(value, str) and (empty or value != "") and len(value) <= limit


def update_problem(update: Any) -> str | None:
    """Why an update cannot be taken, or None. (Checks written out inline: every received update passes here.)"""
    if type(update) is not Update:
        return "an update is not an Update"
    node, incarnation, version = update.node, update.incarnation, update.meta_version
    if type(node) is not str or not 0 < len(node) <= MAX_NODE_ID:
        return f"node id must be 1..{MAX_NODE_ID} characters"
    if update.status not in _STATUS_SET:
        return f"unknown status {update.status!r}"
    if type(incarnation) is not int or type(version) is not int or not 0 <= incarnation <= MAX_NUMBER \
            or not 0 <= version <= MAX_NUMBER:
        return f"incarnation and meta_version must be integers in 0..{MAX_NUMBER}"
    if type(update.source) is not str or len(update.source) > MAX_NODE_ID:
        return f"source must be a node id of at most {MAX_NODE_ID} characters"
    if type(update.address) is not str or len(update.address) > MAX_ADDRESS:
        return f"address must be text of at most {MAX_ADDRESS} characters"
    if type(update.meta) is not bytes or len(update.meta) > MAX_META_BYTES:
        return f"meta must be at most {MAX_META_BYTES} bytes"
    return None


def message_problem(message: Any) -> str | None:
    """Why a message is malformed, or None: every field's type and bound, before anything is applied."""
    kind = type(message)
    if kind not in (Ping, PingReq, Ack, Nack, Gossip, Sync):
        return f"not a SWIM message: {kind.__name__}"
    if kind is not Gossip and kind is not Sync and not _number(message.seq):
        return f"seq must be an integer in 0..{MAX_NUMBER}"
    if kind in (Ping, PingReq) and not _text(message.target, MAX_NODE_ID, empty=False):
        return "target must be a node id"
    if kind is Sync:
        if type(message.digest) is not int or not 0 <= message.digest < 2**64 or type(message.reply) is not bool:
            return "digest must be a 64-bit integer and reply a boolean"
        updates, limit = message.states, MAX_SYNC_STATES
    elif kind is Nack:
        return None
    else:
        updates, limit = message.piggyback, MAX_PIGGYBACK
    if not isinstance(updates, tuple) or len(updates) > limit:
        return f"{kind.KIND} carries more than {limit} updates"
    return next(filter(None, map(update_problem, updates)), None)


_UPDATE_KEYS = {"node": "n", "status": "s", "incarnation": "i", "source": "f", "address": "a",
                "meta_version": "mv", "meta": "m"}
"""Short wire names: updates are most of SWIM's bytes."""
_SHORT_KEYS = frozenset(_UPDATE_KEYS.values())
_LONG_NAMES = {short: name for name, short in _UPDATE_KEYS.items()}
_DEFAULTS = {"source": "", "address": "", "meta_version": 0, "meta": b""}


def _update_fields(update: Update) -> dict[str, Any]:
    body = {"n": update.node, "s": update.status, "i": update.incarnation}
    for name, default in _DEFAULTS.items():
        value = getattr(update, name)
        if value != default:
            body[_UPDATE_KEYS[name]] = value
    return body


@functools.cache
def _field_names(message_type: type) -> tuple[str, ...]:
    return tuple(spec.name for spec in fields(message_type))


def to_fields(message: Message) -> tuple[str, dict[str, Any]]:
    """The message's type name and a map of plain scalars for msgpack (updates under short keys)."""
    body: dict[str, Any] = {}
    for name in _field_names(type(message)):
        value = getattr(message, name)
        body[name] = [_update_fields(u) for u in value] if name in ("piggyback", "states") else value
    return message.KIND, body


def _update_from(body: Any) -> Update:
    if not isinstance(body, dict) or not {"n", "s", "i"} <= body.keys() or not body.keys() <= _SHORT_KEYS:
        raise Malformed("an update must be a map with n, s, i and only known keys")
    return Update(**{_LONG_NAMES[key]: value for key, value in body.items()})


def from_fields(kind: str, body: Any) -> Message:
    """The message of that type from a decoded map; raises `Malformed` for an unknown type, a missing or
    unknown field, a wrong type or an exceeded bound."""
    message_type = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if message_type is None:
        raise Malformed(f"unknown SWIM message type {kind!r}")
    if not isinstance(body, dict):
        raise Malformed(f"{kind}: body must be a map")
    names = set(_field_names(message_type))
    if not body.keys() <= names:
        raise Malformed(f"{kind}: unknown fields {sorted(map(str, body.keys() - names))}")
    values = dict(body)
    for name, limit in (("piggyback", MAX_PIGGYBACK), ("states", MAX_SYNC_STATES)):
        if name in values:
            items = values[name]
            if not isinstance(items, list) or len(items) > limit:
                raise Malformed(f"{kind}: {name} must be a list of at most {limit} updates")
            values[name] = tuple(_update_from(item) for item in items)
    try:
        message = message_type(**values)
    except TypeError as exc:
        raise Malformed(f"{kind}: {exc}") from None
    problem = message_problem(message)
    if problem:
        raise Malformed(f"{kind}: {problem}")
    return message
