"""A node's identity and load as SWIM metadata (`core/swim_meta.py`), and the peer table following another judge
of liveness (`PeerTable.judge`, `refresh`, `judge_by_silence`)."""

from __future__ import annotations

import msgpack
import pytest

from zmqllm.core.membership import Identity, Liveness, Load, PeerTable
from zmqllm.core.swim_meta import decode_meta, encode_meta
from zmqllm.core.swim_wire import MAX_META_BYTES


def _identity(models: tuple[str, ...] = ("gemma3-270m", "qwen"), **kw) -> Identity:
    return Identity("id-a", "a", "tcp://10.0.0.1:5555", models, 4, **{"ctx": 2048, "chat": True,
                                                                      "loaded": ("qwen",), **kw})


def test_identity_and_load_round_trip_without_the_cache_summary() -> None:
    identity = _identity(loading=("gemma3-270m",))
    load = Load(active=2, queued=5, slots=4, tok_s=31.25, cache={"qwen": frozenset({1, 2})}, speed=12.5)
    blob = encode_meta(identity, load)
    assert len(blob) <= MAX_META_BYTES
    decoded_identity, decoded_load = decode_meta("id-a", "tcp://10.0.0.1:5555", blob)
    assert decoded_identity == identity
    assert (decoded_load.active, decoded_load.queued, decoded_load.slots, decoded_load.speed) == (2, 5, 4, 12.5)
    assert decoded_load.tok_s == pytest.approx(31.2, abs=0.1) and decoded_load.cache == {}


def test_a_long_model_list_is_cut_to_fit_not_refused() -> None:
    models = tuple(f"model-number-{i:03d}-with-a-long-name" for i in range(40))
    identity = _identity(models, loaded=models[:30], loading=models[30:])
    blob = encode_meta(identity, Load())
    assert len(blob) <= MAX_META_BYTES
    decoded, _ = decode_meta("id-a", "e", blob)
    assert decoded.name == "a" and 0 < len(decoded.models) < 40 and decoded.models == models[:len(decoded.models)]
    assert decoded.loaded is None and decoded.loading == ()  # left out first


@pytest.mark.parametrize("blob", [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"n": "a"}),
                                  msgpack.packb({"n": "a", "m": ["x"], "s": -1}),
                                  msgpack.packb({"n": "a", "m": "x", "s": 1}),
                                  msgpack.packb({"n": "", "m": ["x"], "s": 1}),
                                  msgpack.packb({"n": "a", "m": ["x"], "s": 1, "l": [3]})])
def test_a_blob_this_module_did_not_write_decodes_to_none(blob: bytes) -> None:
    assert decode_meta("id", "e", blob) is None


def test_garbage_numbers_in_the_load_read_as_zero() -> None:
    blob = msgpack.packb({"n": "a", "m": ["x"], "s": 1, "a": -3, "q": "many", "t": float("nan"), "v": True})
    _, load = decode_meta("id", "e", blob)
    assert (load.active, load.queued, load.tok_s, load.speed) == (0, 0, 0.0, 0.0)


def test_under_another_judge_the_table_changes_state_only_when_told() -> None:
    me = Identity("me", "me", "tcp://127.0.0.1:1", ("echo",), 1)
    table = PeerTable(me, Liveness(), 0.0, judge_by_silence=False)
    table.observe(_identity(), 0.0)
    assert table.judge("id-a", "suspect", 1.0).new == "suspect"
    assert table.heard_from("id-a", 1.5) and table.get("id-a").state == "suspect"  # hearing does not revive
    assert table.tick(60.0) == [] and table.get("id-a").state == "suspect"  # nor does silence kill
    assert table.refresh(_identity(loaded=()), Load(active=1), 2.0, first_hand=False)
    peer = table.get("id-a")
    assert peer.state == "suspect" and peer.identity.loaded == () and peer.load.active == 1
    assert peer.last_seen == 1.5  # second-hand news is not hearing from it
    assert table.judge("id-a", "suspect", 3.0) is None  # no change, no transition
    change = table.judge("id-a", "dead", 3.0)
    assert (change.old, change.new) == ("suspect", "dead")
    assert not table.refresh(Identity("id-z", "z", "e", ("echo",), 1), None, 3.0, first_hand=True)
