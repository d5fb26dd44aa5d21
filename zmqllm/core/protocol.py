"""The wire protocol: one msgpack map per message, validated at the edge.

Every message carries the envelope `v` (protocol version), `t` (type), `id`
(sender-local message number), `src` (sender: node id or client id) and, for a
reply, `re` (the `id` it answers). The type fields follow `MESSAGE_FIELDS`, in
the same order as the table in docs/protocol.md. Pure: no sockets, no clock.

`decode` never raises anything but `ProtocolError`, whatever bytes it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""Largest frame accepted (prompts of long documents fit; anything bigger is `too_large`)."""
MAX_NESTING = 4
"""Levels of lists and maps inside a map field (a run's final event: tasks → record → executed_on)."""
MAX_BATCH = 4096
"""Most messages one batch frame may hold."""
MAX_LIST_ITEMS = 4096
"""Items a list field may hold unless `LIST_LIMITS` names it."""
LIST_LIMITS = {
    "resume_ids": 1_000_000,  # every token a failed-over task delivered (max_tokens is at most 1,000,000)
    "tasks": 100_000,  # a node's task listing
    "events": 65_536,  # one EVENTS flush
    "messages": 10_000,  # a chat's turns
    "stop": 16,
    "models": 256,
    "peers": 8192,  # a mesh's live nodes (SWIM's tables hold at most 8,192: core/swim_wire.py)
    "piggyback": 64,  # SWIM updates riding on one message
    "states": 8192,  # a whole SWIM table in one push-pull
}
"""Caps on list fields by name: what a node allocates for one message is bounded before it is read."""
TEXT_LIMITS = {"node_id": 64, "name": 64, "endpoint": 256, "digest": 64, "task_id": 128, "run_id": 128,
               "model": 256, "origin": 64, "code": 64, "key": 256, "kind": 64, "state": 64, "owner": 64,
               "workflow": 256, "source": 1024, "target": 64}
"""Caps on string fields that name things (texts such as prompts are bounded by the frame size)."""
_UNPACK_LIMITS = {"max_array_len": 1_000_000 + MAX_BATCH, "max_map_len": 4096}
"""msgpack refuses to allocate beyond these while unpacking (its defaults follow the frame size)."""

ERROR_CODES = frozenset(
    {
        "bad_request",
        "malformed",
        "too_large",
        "protocol_version",
        "unknown_type",
        "name_taken",
        "no_peer_for_model",
        "peer_unknown",
        "peer_dead",
        "busy",
        "deadline",
        "engine_failed",
        "task_unknown",
        "slow_client",
        "run_unknown",
        "step_failed",
        "internal",
        "not_allowed",
    }
)


class ProtocolError(Exception):
    """A frame that is not a valid message. `code` is an error code for the ERROR
    reply; `ref` is the offending message's `id` when it could be read."""

    def __init__(self, code: str, message: str, ref: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


# Field kinds: each a (python types, description) pair used by `_check_field`.
STR = "str"
INT = "int"
NUM = "num"
BOOL = "bool"
STRS = "list[str]"
INTS = "list[int]"
MAP = "map"
MAPS = "list[map]"
UPDATES = "list[update]"
"""SWIM updates: maps whose keys and values `core/swim_wire.from_fields` checks (`meta` is bytes)."""

_OPTIONAL = "?"

_IDENTITY = {
    "node_id": STR,
    "name": STR,
    "endpoint": STR,
    "models": STRS,
    "slots": INT,
    "ctx": INT + _OPTIONAL,
    "chat": BOOL + _OPTIONAL,
    "loaded": STRS + _OPTIONAL,
    "loading": STRS + _OPTIONAL,
}
"""What a node says about itself in HELLO, WELCOME and HEARTBEAT."""
_TASK = {"task_id": STR, "prompt": STR, "max_tokens": INT, "params": MAP, "stop": STRS}
"""What SUBMIT and ASSIGN both carry about the work."""

MESSAGE_FIELDS: dict[str, dict[str, str]] = {
    # membership (node ↔ node)
    "HELLO": {**_IDENTITY},
    "WELCOME": {**_IDENTITY, "peers": MAPS},
    "HEARTBEAT": {**_IDENTITY, "load": MAP, "digest": STR},
    "PEERS": {"peers": MAPS},
    "BYE": {"node_id": STR, "name": STR},
    # queries (client → node)
    "GET_PEERS": {},
    "GET_STATUS": {},
    "STATUS": {"status": MAP},
    "GET_TASKS": {},
    "TASKS": {"tasks": MAPS},
    "GET_RESULT": {"task_id": STR, "local": BOOL + _OPTIONAL},
    "RESULT": {"task": MAP},
    # tasks
    "SUBMIT": {
        **_TASK,
        "model": STR + _OPTIONAL,
        "peer": STR + _OPTIONAL,
        "messages": MAPS + _OPTIONAL,
        "failover": BOOL + _OPTIONAL,
        "deadline_s": NUM + _OPTIONAL,
        "resume_ids": INTS + _OPTIONAL,
        "resume_text": STR + _OPTIONAL,
        "start_seq": INT + _OPTIONAL,
        "detach": BOOL + _OPTIONAL,
    },
    "ACCEPTED": {"task_id": STR, "origin": STR},
    "ASSIGN": {
        **_TASK,
        "model": STR,
        "origin": STR,
        "messages": MAPS + _OPTIONAL,
        "resume_ids": INTS + _OPTIONAL,
        "start_seq": INT + _OPTIONAL,
    },
    "ACCEPT": {"task_id": STR},
    "REJECT": {"task_id": STR, "code": STR, "message": STR},
    "TOKEN": {"task_id": STR, "seq": INT, "text": STR, "ids": INTS},
    "FAILOVER": {"task_id": STR, "from": STR, "to": STR, "at_seq": INT, "reason": STR},
    "DONE": {
        "task_id": STR,
        "finish_reason": STR,
        "usage": MAP,
        "timings": MAP,
        "executed_by": STR,
        "executed_on": STRS,
        "text": STR + _OPTIONAL,
    },
    "ERROR": {
        "code": STR,
        "message": STR,
        "retryable": BOOL,
        "task_id": STR + _OPTIONAL,
    },
    "CANCEL": {"task_id": STR, "local": BOOL + _OPTIONAL},
    # any node answers for any task (node → peer, and the peer's answer on the same link)
    "LOOKUP": {"kind": STR, "key": STR},
    "FOUND": {"kind": STR, "key": STR, "has": BOOL, "state": STR + _OPTIONAL, "epoch": INT + _OPTIONAL},
    # dashboards
    "SUBSCRIBE": {},
    "UNSUBSCRIBE": {},
    "EVENTS": {"node": STR, "events": MAPS, "dropped": INT},
    # workflow runs (client → orchestrating node)
    "RUN": {
        "run_id": STR,
        "spec": STR + _OPTIONAL,
        "source": STR + _OPTIONAL,
        "input": STR + _OPTIONAL,
        "resume": BOOL + _OPTIONAL,
        "attach": BOOL + _OPTIONAL,
        "local": BOOL + _OPTIONAL,
    },
    "RUN_EVENT": {"run_id": STR, "event": MAP},
    "CANCEL_RUN": {"run_id": STR, "local": BOOL + _OPTIONAL},
    "GET_RUNS": {},
    "RUNS": {"runs": MAPS},
    # runs without a home node (node → its run's replica holder, and the holder's answer on the same link)
    "REPLICATE": {
        "run_id": STR,
        "epoch": INT,
        "seq": INT,
        "kind": STR,
        "workflow": STR + _OPTIONAL,
        "source": STR + _OPTIONAL,
        "spec": STR + _OPTIONAL,
        "input": STR + _OPTIONAL,
        "key": STR + _OPTIONAL,
        "text": STR + _OPTIONAL,
        "record": MAP + _OPTIONAL,
    },
    "REPLICATED": {"run_id": STR, "epoch": INT, "seq": INT, "ok": BOOL, "stale": BOOL + _OPTIONAL,
                   "owner": STR + _OPTIONAL},
    # SWIM membership (`membership = "swim"`; docs/membership.md): node → node, either socket
    "SWIM_PING": {"seq": INT, "target": STR, "piggyback": UPDATES},
    "SWIM_PING_REQ": {"seq": INT, "target": STR, "piggyback": UPDATES},
    "SWIM_ACK": {"seq": INT, "piggyback": UPDATES},
    "SWIM_NACK": {"seq": INT},
    "SWIM_GOSSIP": {"piggyback": UPDATES},
    "SWIM_SYNC": {"digest": INT, "states": UPDATES, "reply": BOOL},
}
"""Every message type and its fields; a trailing `?` marks an optional field."""

_ENVELOPE = ("v", "t", "id", "src", "re")


@dataclass(frozen=True, slots=True)
class Message:
    """A validated message: its type, its fields, and the envelope."""

    type: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    id: int = 0
    src: str = ""
    re: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


def make(type_: str, *, src: str = "", id: int = 0, re: int | None = None, **fields: Any) -> Message:
    """Build a message, validating it as `decode` would: what this raises on
    (`ProtocolError`) is what a peer would refuse. None-valued fields are left out."""
    fields = {k: v for k, v in fields.items() if v is not None}
    if not isinstance(src, str) or not _is_int(id) or (re is not None and not _is_int(re)):
        raise ProtocolError("malformed", f"{type_}: envelope needs a string src and integer id/re")
    _validate(type_, fields, id)
    return Message(type_, fields, id, src, re)


def encode(message: Message) -> bytes:
    """Serialise a message to one frame."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "t": message.type, "id": message.id, "src": message.src}
    if message.re is not None:
        body["re"] = message.re
    body.update(message.fields)
    return msgpack.packb(body, use_bin_type=True)


def decode(frame: bytes) -> Message:
    """Parse and validate a frame holding one message. Raises only `ProtocolError`."""
    body = _unpack(frame)
    if not isinstance(body, dict):
        raise ProtocolError("malformed", f"message must be a map, got {type(body).__name__}")
    return _from_body(body)


def decode_frame(frame: bytes) -> list[Message]:
    """Parse a frame holding one message (a map) or a batch (an array of maps).
    A batch is refused whole if any message in it is bad. Raises only `ProtocolError`."""
    body = _unpack(frame)
    if isinstance(body, dict):
        return [_from_body(body)]
    if not isinstance(body, list) or not body or len(body) > MAX_BATCH:
        raise ProtocolError("malformed", f"a frame must be a map or an array of 1-{MAX_BATCH} maps")
    if not all(isinstance(item, dict) for item in body):
        raise ProtocolError("malformed", "every message in a batch must be a map")
    return [_from_body(item) for item in body]


def batch_frame(encoded: list[bytes]) -> bytes:
    """Join already-encoded messages into one batch frame (a msgpack array header
    followed by the maps, so nothing is encoded twice)."""
    count = len(encoded)
    if count == 1:
        return encoded[0]
    if count <= 15:
        header = bytes([0x90 | count])
    elif count <= 0xFFFF:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return header + b"".join(encoded)


def _unpack(frame: bytes) -> Any:
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"message of {len(frame)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True, **_UNPACK_LIMITS)
    except Exception as exc:  # msgpack raises many types for bad input; all mean the same
        raise ProtocolError("malformed", f"not a msgpack message: {type(exc).__name__}") from None


def _from_body(body: dict[str, Any]) -> Message:
    ref = body.get("id") if _is_int(body.get("id")) else None
    version = body.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            "protocol_version", f"protocol version {version!r} not supported (this node speaks {PROTOCOL_VERSION})", ref
        )
    type_ = body.get("t")
    if not isinstance(type_, str) or type_ not in MESSAGE_FIELDS:
        raise ProtocolError("unknown_type", f"unknown message type {type_!r}", ref)
    if ref is None:
        raise ProtocolError("malformed", f"{type_}: envelope field 'id' must be an integer")
    src = body.get("src")
    if not isinstance(src, str):
        raise ProtocolError("malformed", f"{type_}: envelope field 'src' must be a string", ref)
    re_ = body.get("re")
    if re_ is not None and not _is_int(re_):
        raise ProtocolError("malformed", f"{type_}: envelope field 're' must be an integer", ref)
    fields = {k: v for k, v in body.items() if k not in _ENVELOPE}
    _validate(type_, fields, ref)
    return Message(type_, fields, ref, src, re_)


def _validate(type_: str, fields: Mapping[str, Any], ref: int | None) -> None:
    spec = _COMPILED.get(type_)
    if spec is None:
        raise ProtocolError("unknown_type", f"unknown message type {type_!r}", ref)
    allowed, checks = spec
    if not allowed.issuperset(fields):
        name = next(n for n in fields if n not in allowed)
        raise ProtocolError("bad_request", f"{type_}: unexpected field {name!r}", ref)
    for name, kind, check, optional in checks:
        if name not in fields:
            if optional:
                continue
            raise ProtocolError("bad_request", f"{type_}: missing field {name!r}", ref)
        value = fields[name]
        if not check(value):
            got = type(value).__name__
            raise ProtocolError("bad_request", f"{type_}: field {name!r} must be {kind}, got {got}", ref)
        limit = _limit_of(name, kind)
        if limit is not None and len(value) > limit:
            what = "items" if kind in _LISTS else "characters"
            raise ProtocolError("too_large", f"{type_}: field {name!r} has {len(value)} {what} (at most {limit})", ref)


_LISTS = frozenset({"list[str]", "list[int]", "list[map]", "list[update]"})


def _limit_of(name: str, kind: str) -> int | None:
    if kind in _LISTS:
        return LIST_LIMITS.get(name, MAX_LIST_ITEMS)
    return TEXT_LIMITS.get(name) if kind == "str" else None


_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what msgpack can carry


def _is_int(value: Any) -> bool:
    return type(value) is int and _INT_MIN <= value <= _INT_MAX


def _is_scalar(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return _INT_MIN <= value <= _INT_MAX
    return value is None or isinstance(value, (str, float, bool))


_FLAT = (str, float, bool, type(None))


def _is_plain(value: Any, depth: int = 0) -> bool:
    """Maps inside messages hold scalars, lists and maps, nested at most `MAX_NESTING` deep."""
    if isinstance(value, dict):
        if depth >= MAX_NESTING:
            return False
        for key, item in value.items():  # flat maps (trace events) take the fast path
            if not isinstance(key, str):
                return False
            if type(item) in _FLAT or (type(item) is int and _INT_MIN <= item <= _INT_MAX):
                continue
            if not _is_plain(item, depth + 1):
                return False
        return True
    if _is_scalar(value):
        return True
    if depth >= MAX_NESTING:
        return False
    if isinstance(value, list):
        return all(_is_plain(v, depth + 1) for v in value)
    return False


_CHECKS: dict[str, Callable[[Any], bool]] = {
    STR: lambda v: isinstance(v, str),
    INT: _is_int,
    NUM: lambda v: (isinstance(v, float) or _is_int(v)),
    BOOL: lambda v: isinstance(v, bool),
    STRS: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    INTS: lambda v: isinstance(v, list) and all(_is_int(x) for x in v),
    MAP: lambda v: isinstance(v, dict) and _is_plain(v),
    MAPS: lambda v: isinstance(v, list) and all(isinstance(x, dict) and _is_plain(x, 1) for x in v),
    UPDATES: lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
}

_COMPILED: dict[str, tuple[frozenset[str], tuple[tuple[str, str, Callable[[Any], bool], bool], ...]]] = {
    type_: (
        frozenset(spec),
        tuple((name, kind.rstrip(_OPTIONAL), _CHECKS[kind.rstrip(_OPTIONAL)], kind.endswith(_OPTIONAL))
              for name, kind in spec.items()),
    )
    for type_, spec in MESSAGE_FIELDS.items()
}
"""MESSAGE_FIELDS turned into checks once, so validating a token costs microseconds."""


def error(code: str, message: str, *, src: str, re: int | None = None, task_id: str | None = None,
          retryable: bool = False) -> Message:
    """An ERROR message; `code` must be one of `ERROR_CODES`."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    return make("ERROR", src=src, re=re, code=code, message=message, retryable=retryable, task_id=task_id)
