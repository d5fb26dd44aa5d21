"""A node's models and load as SWIM metadata: the opaque blob `core/swim.py` spreads with each alive update.

Why: with partial views a node hears heartbeats only from the few members it links to, yet the scheduler may
pick any node in the mesh. So what a heartbeat says (identity: name, models, slots; load: work and speed)
also travels as metadata, versioned and gossiped. The blob is msgpack with short keys and must stay within
`MAX_META_BYTES` (512): what does not fit is left out in a fixed order (loading, then loaded models, then
models from the end), so a node with a long model list is still listed, with the models it could fit. The
prefix-cache summary (up to 1,024 hashes) never fits and is left out: a node that is not linked is routed to
by load alone, and by what its origin remembers placing there.

Pure: bytes in, `Identity` and `Load` out; a blob that is not what this module writes decodes to None.
"""

from __future__ import annotations

from typing import Any

import msgpack

from zmqllm.core.membership import Identity, Load, plain_number
from zmqllm.core.swim_wire import MAX_META_BYTES

_MAX_TEXT = 256
"""Characters in a name or model name (the protocol's caps)."""
_MAX_MODELS = 256


def encode_meta(identity: Identity, load: Load) -> bytes:
    """The blob for this node's identity and load, within `MAX_META_BYTES` (see the module docstring)."""
    body: dict[str, Any] = {"n": identity.name, "m": list(identity.models), "s": identity.slots, "c": identity.ctx,
                            "h": identity.chat, "a": load.active, "q": load.queued, "t": round(load.tok_s, 1),
                            "v": round(load.speed, 1)}
    if identity.loaded is not None:
        body["l"] = list(identity.loaded)
    if identity.loading:
        body["g"] = list(identity.loading)
    blob = _pack(body)
    for key in ("g", "l"):
        if len(blob) > MAX_META_BYTES and key in body:
            del body[key]
            blob = _pack(body)
    while len(blob) > MAX_META_BYTES and body["m"]:
        body["m"].pop()
        blob = _pack(body)
    return blob


def decode_meta(node_id: str, endpoint: str, blob: bytes) -> tuple[Identity, Load] | None:
    """The identity and load a member's blob says; None for a blob this module did not write (or none yet)."""
    try:
        body = msgpack.unpackb(blob, raw=False, strict_map_key=True) if blob else None
    except Exception:  # msgpack raises many types for bad input; all mean the same
        return None
    if not isinstance(body, dict) or not _text(body.get("n")) or not _texts(body.get("m")) \
            or not _count(body.get("s")) or not _count(body.get("c", 0)) or type(body.get("h", False)) is not bool:
        return None
    loaded, loading = body.get("l"), body.get("g", [])
    if (loaded is not None and not _texts(loaded)) or not _texts(loading):
        return None
    identity = Identity(node_id, body["n"], endpoint, tuple(body["m"]), body["s"], body.get("c", 0),
                        body.get("h", False), None if loaded is None else tuple(loaded), tuple(loading))
    load = Load(active=_number(body, "a", int), queued=_number(body, "q", int), slots=body["s"],
                tok_s=_number(body, "t", float), speed=_number(body, "v", float))
    return identity, load


def _pack(body: dict[str, Any]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def _text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_TEXT


def _texts(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= _MAX_MODELS and all(map(_text, value))


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**31


def _number(body: dict[str, Any], key: str, kind: type) -> Any:
    return max(kind(0), plain_number(body.get(key, 0), kind))
