"""The wire protocol, fed plain values and bytes (no sockets).

Round trips for every message type with generated field values, and fuzzing
that holds `decode` to its promise: whatever the bytes, it returns a valid
`Message` or raises `ProtocolError` with a known code — nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmqllm.core import protocol
from zmqllm.core.protocol import (
    ERROR_CODES,
    MAX_MESSAGE_BYTES,
    MESSAGE_FIELDS,
    PROTOCOL_VERSION,
    Message,
    ProtocolError,
    decode,
    encode,
    make,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PER_TYPE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1
"""msgpack integers run from the smallest int64 to the largest uint64."""
MAX_DEPTH = protocol.MAX_NESTING
"""A value at this depth inside a map field must be a scalar (see protocol._is_plain)."""

# -- strategies -------------------------------------------------------------------

wire_ints = st.integers(INT64_MIN, UINT64_MAX)
# NaN is excluded only where equality is compared (NaN != NaN); the fuzz tests cover it.
scalars = st.none() | st.booleans() | wire_ints | st.floats(allow_nan=False) | st.text(max_size=20)


def plain(depth: int) -> st.SearchStrategy[Any]:
    """A value allowed at `depth` inside a map field: deeper nesting is refused."""
    if depth >= MAX_DEPTH:
        return scalars
    inner = plain(depth + 1)
    return scalars | st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)


def plain_map(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    """A map at `depth` (its values sit one level deeper)."""
    return st.dictionaries(st.text(max_size=8), plain(depth + 1), max_size=4)


KIND_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    protocol.STR: st.text(max_size=40),
    protocol.INT: wire_ints,
    protocol.NUM: wire_ints | st.floats(allow_nan=False),
    protocol.BOOL: st.booleans(),
    protocol.STRS: st.lists(st.text(max_size=10), max_size=4),
    protocol.INTS: st.lists(wire_ints, max_size=4),
    protocol.MAP: plain_map(0),
    protocol.MAPS: st.lists(plain_map(1), max_size=3),
    protocol.UPDATES: st.lists(plain_map(1), max_size=3),
}


def fields_for(type_: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid fields for `type_`; an optional field is present or absent (None)."""
    parts = {}
    for name, kind in MESSAGE_FIELDS[type_].items():
        if kind.endswith("?"):
            parts[name] = st.none() | KIND_STRATEGIES[kind.rstrip("?")]
        else:
            parts[name] = KIND_STRATEGIES[kind]
    return st.fixed_dictionaries(parts)


envelopes = st.fixed_dictionaries(
    {"src": st.text(max_size=20), "id": wire_ints, "re": st.none() | wire_ints}
)


def frame(body: dict[Any, Any]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def envelope(type_: str, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "t": type_, "id": 7, "src": "client-1", **fields}


SUBMIT = {"task_id": "t1", "prompt": "hi", "max_tokens": 4, "params": {}, "stop": []}


def rejected(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert info.value.code in ERROR_CODES
    return info.value


def decodes_or_refuses(data: bytes) -> None:
    """`decode`'s promise: a valid message, or ProtocolError with a known code."""
    try:
        message = decode(data)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES, exc.code
        assert exc.ref is None or (isinstance(exc.ref, int) and not isinstance(exc.ref, bool))
        return
    assert isinstance(message, Message) and message.type in MESSAGE_FIELDS
    assert decode(encode(message)).type == message.type  # what decode accepts, encode can say again


# -- round trips ------------------------------------------------------------------


@pytest.mark.parametrize("type_", list(MESSAGE_FIELDS))
@PER_TYPE
@given(data=st.data())
def test_every_type_round_trips(type_: str, data: st.DataObject) -> None:
    fields = data.draw(fields_for(type_), label="fields")
    env = data.draw(envelopes, label="envelope")
    message = make(type_, src=env["src"], id=env["id"], re=env["re"], **fields)
    back = decode(encode(message))
    assert back == message
    assert (back.type, back.id, back.src, back.re) == (type_, env["id"], env["src"], env["re"])
    assert dict(back.fields) == {k: v for k, v in fields.items() if v is not None}


@PER_TYPE
@given(value=plain_map(0))
def test_nested_map_fields_keep_their_shape(value: dict[str, Any]) -> None:
    message = make("STATUS", src="n", id=1, status=value)
    assert decode(encode(message))["status"] == value


def test_map_deeper_than_the_rule_is_refused() -> None:
    ok = {"a": {"b": {"c": {"d": 1}}}}
    assert decode(frame(envelope("STATUS", status=ok)))["status"] == ok
    too_deep = {"a": {"b": {"c": {"d": {"e": 1}}}}}
    error = rejected(frame(envelope("STATUS", status=too_deep)))
    assert error.code == "bad_request" and "'status'" in error.message
    row_too_deep = [{"a": {"b": {"c": {"d": 1}}}}]
    error = rejected(frame(envelope("PEERS", peers=row_too_deep)))
    assert error.code == "bad_request" and "'peers'" in error.message
    row_ok = [{"a": {"b": {"c": 1}}}]
    assert decode(frame(envelope("PEERS", peers=row_ok)))["peers"] == row_ok


def test_optional_field_absent_and_present() -> None:
    bare = decode(encode(make("SUBMIT", id=1, **SUBMIT)))
    assert "model" not in bare.fields and bare.get("model") is None
    named = decode(encode(make("SUBMIT", id=1, model="gemma", peer="b", **SUBMIT)))
    assert (named["model"], named["peer"]) == ("gemma", "b")


# -- decode never raises anything but ProtocolError -------------------------------


@FUZZ
@given(data=st.binary(max_size=256))
def test_random_bytes_never_crash(data: bytes) -> None:
    decodes_or_refuses(data)


msgpack_scalars = (
    st.none()
    | st.booleans()
    | wire_ints
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12))
)
map_keys = st.text(max_size=6) | st.binary(max_size=4) | st.integers(-5, 5) | st.sampled_from(
    ["v", "t", "id", "src", "re", "task_id", "peers", "load"]
)
any_shape = st.recursive(
    msgpack_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(map_keys, inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(value=any_shape)
def test_any_msgpack_value_never_crashes(value: Any) -> None:
    decodes_or_refuses(frame(value))


@FUZZ
@given(
    type_=st.sampled_from(sorted(MESSAGE_FIELDS)),
    v=st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION, 0, 2, None, "1", True]),
    extra=st.dictionaries(map_keys, any_shape, max_size=6),
)
def test_message_shaped_maps_never_crash(type_: str, v: Any, extra: dict[Any, Any]) -> None:
    """Maps with a real version and type reach the field checks, whatever the fields hold."""
    decodes_or_refuses(frame({"v": v, "t": type_, **extra}))


valid_frames = st.sampled_from(sorted(MESSAGE_FIELDS)).flatmap(
    lambda t: st.builds(lambda f, e: encode(make(t, src=e["src"], id=e["id"], re=e["re"], **f)), fields_for(t),
                        envelopes)
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=valid_frames)
def test_every_truncation_is_malformed(data: bytes) -> None:
    for length in range(len(data)):
        error = rejected(data[:length])
        assert error.code == "malformed", (length, error.message)


@FUZZ
@given(data=valid_frames, flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1,
                                         max_size=4))
def test_flipped_bytes_never_crash(data: bytes, flips: list[tuple[int, int]]) -> None:
    mutated = bytearray(data)
    for position, mask in flips:
        mutated[position % len(mutated)] ^= mask
    decodes_or_refuses(bytes(mutated))


def test_trailing_bytes_are_malformed() -> None:
    data = encode(make("GET_PEERS", id=1))
    assert rejected(data + b"\xc0").code == "malformed"


# -- specific refusals ------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2, PROTOCOL_VERSION + 1, -1, "1", None])
def test_wrong_version_names_the_message(version: Any) -> None:
    error = rejected(frame({"v": version, "t": "GET_PEERS", "id": 42, "src": "c"}))
    assert error.code == "protocol_version"
    assert error.ref == 42


def test_missing_version_is_a_version_error() -> None:
    error = rejected(frame({"t": "GET_PEERS", "id": 5, "src": "c"}))
    assert (error.code, error.ref) == ("protocol_version", 5)


@pytest.mark.parametrize("version", [True, 1.0])
def test_version_must_be_the_integer(version: Any) -> None:
    """`true` and `1.0` are not protocol version 1 (bool is not an int anywhere on the wire)."""
    error = rejected(frame({"v": version, "t": "GET_PEERS", "id": 42, "src": "c"}))
    assert (error.code, error.ref) == ("protocol_version", 42)


@pytest.mark.parametrize("type_", ["NOPE", "hello", "", 3, None])
def test_unknown_type(type_: Any) -> None:
    error = rejected(frame({"v": PROTOCOL_VERSION, "t": type_, "id": 9, "src": "c"}))
    assert (error.code, error.ref) == ("unknown_type", 9)


def test_missing_field_is_named() -> None:
    fields = dict(SUBMIT)
    del fields["prompt"]
    error = rejected(frame(envelope("SUBMIT", **fields)))
    assert (error.code, error.ref) == ("bad_request", 7)
    assert "'prompt'" in error.message and "missing" in error.message


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_tokens", "4"), ("max_tokens", 4.0), ("prompt", b"hi"), ("stop", "x"), ("stop", [1]),
     ("params", []), ("params", {"k": b"raw"}), ("params", {"k": [[[[1]]]]}),
     ("model", 3)],
)
def test_wrong_field_type_is_named(name: str, value: Any) -> None:
    error = rejected(frame(envelope("SUBMIT", **{**SUBMIT, name: value})))
    assert (error.code, error.ref) == ("bad_request", 7)
    assert f"'{name}'" in error.message


def test_non_string_map_key_is_malformed() -> None:
    assert rejected(frame(envelope("SUBMIT", **{**SUBMIT, "params": {1: 2}}))).code == "malformed"


def test_unexpected_field_is_named() -> None:
    error = rejected(frame(envelope("CANCEL", task_id="t", colour="red")))
    assert (error.code, error.ref) == ("bad_request", 7)
    assert "'colour'" in error.message


@pytest.mark.parametrize(
    ("type_", "fields"),
    [
        ("SUBMIT", {**SUBMIT, "max_tokens": True}),
        ("TOKEN", {"task_id": "t", "seq": False, "text": "x", "ids": []}),
        ("TOKEN", {"task_id": "t", "seq": 0, "text": "x", "ids": [1, True]}),
        ("HELLO", {"node_id": "n", "name": "a", "endpoint": "tcp://h:1", "models": [], "slots": True}),
    ],
)
def test_bool_is_not_an_int(type_: str, fields: dict[str, Any]) -> None:
    assert rejected(frame(envelope(type_, **fields))).code == "bad_request"
    with pytest.raises(ProtocolError):
        make(type_, **fields)


def test_int_is_not_a_bool() -> None:
    error = rejected(frame(envelope("ERROR", code="busy", message="m", retryable=1)))
    assert error.code == "bad_request" and "'retryable'" in error.message


@pytest.mark.parametrize(
    ("key", "value", "ref"),
    [("id", True, None), ("id", "7", None), ("id", 1.5, None), ("src", 5, 7), ("src", None, 7), ("re", "1", 7),
     ("re", True, 7)],
)
def test_bad_envelope_is_malformed(key: str, value: Any, ref: int | None) -> None:
    error = rejected(frame({**envelope("GET_PEERS"), key: value}))
    assert (error.code, error.ref) == ("malformed", ref)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x93\x01\x02\x03", frame("a string"), frame(None), b"\xc1",
     b"\xd4\xff\x00",  # a timestamp extension (type -1) whose 1-byte payload no timestamp has
     b"\xdd\xff\xff\xff\xff",  # an array header claiming 4 G elements in a 5-byte frame
     b"\x91" * 100_000],  # nesting far deeper than any unpacker's stack
    ids=["empty", "array", "string", "nil", "reserved-byte", "bad-timestamp", "huge-array-header", "deep-nesting"],
)
def test_not_a_map_is_malformed(data: bytes) -> None:
    assert rejected(data).code == "malformed"


def test_timestamp_extension_is_not_a_field_value() -> None:
    timestamp = b"\xd6\xff\x00\x00\x00\x01"  # msgpack's own timestamp type: 1 s after the epoch
    data = frame(envelope("STATUS", status={})).replace(b"\xa6status\x80", b"\xa6status" + timestamp)
    error = rejected(data)
    assert error.code == "bad_request" and "'status'" in error.message


def test_frame_over_the_limit_is_too_large() -> None:
    error = rejected(b"\x00" * (MAX_MESSAGE_BYTES + 1))
    assert error.code == "too_large" and str(MAX_MESSAGE_BYTES) in error.message


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    empty = len(encode(make("SUBMIT", id=1, **{**SUBMIT, "prompt": ""})))
    prompt_len = MAX_MESSAGE_BYTES - empty - 4  # "" is a 1-byte fixstr, a long str has a 5-byte header
    data = encode(make("SUBMIT", id=1, **{**SUBMIT, "prompt": "x" * prompt_len}))
    assert len(data) == MAX_MESSAGE_BYTES
    assert len(decode(data)["prompt"]) == prompt_len
    assert rejected(encode(make("SUBMIT", id=1, **{**SUBMIT, "prompt": "x" * (prompt_len + 1)}))).code == "too_large"


# -- building messages ------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "fields"),
    [("CANCEL", {}), ("CANCEL", {"task_id": 1}), ("CANCEL", {"task_id": "t", "extra": 1}), ("NOPE", {})],
)
def test_make_refuses_what_decode_would(type_: str, fields: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        make(type_, **fields)


@pytest.mark.parametrize(
    ("envelope_args", "fields"),
    [
        ({"src": 5}, {"task_id": "t"}),
        ({"id": True}, {"task_id": "t"}),
        ({"id": UINT64_MAX + 1}, {"task_id": "t"}),
        ({}, {"task_id": "t", "seq": UINT64_MAX + 1, "text": "x", "ids": []}),
    ],
    ids=["src-not-str", "id-bool", "id-too-big", "int-field-too-big"],
)
def test_make_never_builds_a_message_peers_refuse(envelope_args: dict[str, Any], fields: dict[str, Any]) -> None:
    """make's contract: it validates as decode would, so a message it returns encodes and decodes."""
    type_ = "TOKEN" if "seq" in fields else "CANCEL"
    try:
        message = make(type_, **envelope_args, **fields)
    except ProtocolError:
        return
    assert decode(encode(message)) == message


def test_error_helper() -> None:
    message = protocol.error("busy", "queue full", src="n", re=3, task_id="t", retryable=True)
    assert decode(encode(message)) == message
    assert dict(message.fields) == {"code": "busy", "message": "queue full", "retryable": True, "task_id": "t"}
    with pytest.raises(ValueError, match="nope"):
        protocol.error("nope", "x", src="n")


def test_message_reads_like_a_mapping() -> None:
    message = make("CANCEL", id=1, task_id="t")
    assert message["task_id"] == "t" and message.get("absent", 5) == 5
    with pytest.raises(KeyError):
        message["absent"]


# -- the docs follow the table ------------------------------------------------------


def test_docs_table_lists_every_type_in_order_and_every_error_code() -> None:
    text = DOCS.read_text(encoding="utf-8")
    documented = re.findall(r"^\|\s*`([A-Z_]+)`\s*\|", text, flags=re.MULTILINE)
    assert documented == list(MESSAGE_FIELDS)
    for code in ERROR_CODES:
        assert re.search(rf"^\|\s*`{code}`\s*\|", text, flags=re.MULTILINE), f"error code {code} not documented"


# -- batch frames --------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(data=st.data(), count=st.integers(1, 40))
def test_batches_round_trip_in_order(data: st.DataObject, count: int) -> None:
    types = data.draw(st.lists(st.sampled_from(list(MESSAGE_FIELDS)), min_size=count, max_size=count))
    messages = [protocol.make(t, src="n", id=i, **data.draw(fields_for(t))) for i, t in enumerate(types, 1)]
    decoded = protocol.decode_frame(protocol.batch_frame([protocol.encode(m) for m in messages]))
    assert [(m.type, dict(m.fields), m.id) for m in decoded] == [(m.type, dict(m.fields), m.id) for m in messages]


@given(data=st.binary(max_size=256))
def test_random_bytes_never_crash_the_batch_decoder(data: bytes) -> None:
    try:
        protocol.decode_frame(data)
    except ProtocolError:
        pass


def test_a_batch_with_one_bad_message_is_refused_whole() -> None:
    good = protocol.encode(protocol.make("CANCEL", src="c", id=1, task_id="t"))
    bad = msgpack.packb({"v": 1, "t": "CANCEL", "id": 2, "src": "c"})  # no task_id
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_frame(protocol.batch_frame([good, bad]))
    assert caught.value.code == "bad_request" and "task_id" in caught.value.message
    with pytest.raises(ProtocolError):
        protocol.decode_frame(msgpack.packb([]))  # an empty batch
