"""Who may say what to a node, and how much: forged, foreign, huge and repeated messages at real daemons.

Each test here failed on the code before the fix it guards (issue: a sound, layered core, part A):
any connection could send node-only messages under any `src`, gossip was followed without bound, task ids
collided across origins, and every bad frame wrote a log line.
"""

from __future__ import annotations

import secrets
import socket

import zmq
from conftest import states, wait_until

from zmqllm.core import protocol

RECV_TIMEOUT_MS = 5000


class FakeNode:
    """A raw DEALER that speaks the node protocol by hand: what an attacker (or a buggy node) can do."""

    def __init__(self, target: str, name: str, node_id: str | None = None, endpoint: str | None = None) -> None:
        self.node_id = node_id or secrets.token_hex(8)
        self.name = name
        self.endpoint = endpoint or f"tcp://127.0.0.1:{_closed_port()}"
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, self.node_id.encode())
        self.sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(target)
        self._ids = 0

    def send(self, type_: str, src: str | None = None, **fields: object) -> None:
        self._ids += 1
        self.sock.send(protocol.encode(protocol.make(type_, src=src or self.node_id, id=self._ids, **fields)))

    def hello(self) -> protocol.Message:
        self.send("HELLO", node_id=self.node_id, name=self.name, endpoint=self.endpoint, models=["echo"], slots=1)
        return self.recv()

    def recv(self) -> protocol.Message:
        return protocol.decode_frame(self.sock.recv())[0]

    def recv_type(self, *types: str) -> protocol.Message:
        """The next message of one of `types` (heartbeats and gossip in between are skipped)."""
        while True:
            message = self.recv()
            if message.type in types:
                return message

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _status(daemon) -> dict:
    with daemon.client() as client:
        return client.status()


def test_a_client_cannot_say_bye_for_a_healthy_peer(spawn):
    a = spawn("a")
    b = spawn("b", "--peer", a.endpoint)
    wait_until(lambda: states(a).get("b") == "alive", 5, what="mesh")
    forger = FakeNode(a.endpoint, "forger")  # its connection id is its own, whatever src it writes
    try:
        forger.send("BYE", src=b.ready_event["node_id"], node_id=b.ready_event["node_id"], name="b")
        reply = forger.recv()
        assert reply.type == "ERROR" and reply["code"] == "not_allowed", reply
        assert states(a)["b"] == "alive"
        assert _status(a)["refused_messages"] >= 1
    finally:
        forger.close()


def test_node_only_messages_from_a_client_connection_are_refused(spawn):
    a = spawn("a")
    client = FakeNode(a.endpoint, "c1")
    try:
        for type_, fields in [("ASSIGN", dict(task_id="t", prompt="p", max_tokens=4, params={}, stop=[],
                                               model="echo", origin="x")),
                              ("PEERS", dict(peers=[{"endpoint": "tcp://127.0.0.1:9"}]))]:
            client.send(type_, src="someone-else", **fields)
            reply = client.recv()
            assert (reply.type, reply["code"]) == ("ERROR", "not_allowed"), reply
        assert _status(a)["tasks"]["running"] == 0 and _status(a)["links"] == 0
    finally:
        client.close()


def test_gossip_cannot_make_a_node_dial_without_bound_and_unanswered_links_are_closed(spawn):
    a = spawn("a", heartbeat=0.1)
    peer = FakeNode(a.endpoint, "gossiper")
    try:
        assert peer.hello().type == "WELCOME"
        ports = [_closed_port() for _ in range(600)]
        peer.send("PEERS", peers=[{"endpoint": f"tcp://127.0.0.1:{port}"} for port in ports])
        wait_until(lambda: _status(a)["links"] > 1, 5, what="a to follow some gossip")
        assert _status(a)["links"] <= 64 + 1  # at most MAX_DIALS_PER_GOSSIP new ones (+ the gossiper's)
        # nobody answers at those endpoints: closed after 20 silent intervals (2 s here)
        wait_until(lambda: _status(a)["links"] <= 1, 15, interval=0.2, what="unanswered links to be closed")
    finally:
        peer.close()


def test_a_name_taken_refusal_from_a_gossiped_endpoint_does_not_stop_the_node(spawn):
    """Only a seed (named by the operator) can refuse a node's name; anyone else could be lying."""
    a = spawn("a", heartbeat=0.1)
    liar_ctx = zmq.Context()
    liar = liar_ctx.socket(zmq.ROUTER)
    liar.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    port = liar.bind_to_random_port("tcp://127.0.0.1")
    peer = FakeNode(a.endpoint, "liar", endpoint=f"tcp://127.0.0.1:{port}")
    try:
        assert peer.hello().type == "WELCOME"  # a dials the liar's endpoint and says HELLO there
        identity, frame = liar.recv_multipart()
        hello = protocol.decode_frame(frame)[0]
        assert hello.type == "HELLO"
        refusal = protocol.error("name_taken", "name 'a' is already used", src=peer.node_id, re=hello.id)
        liar.send_multipart([identity, protocol.encode(refusal)])
        wait_until(lambda: _status(a)["links"] == 0, 10, what="a to close the liar's link")
        assert a.proc.poll() is None
    finally:
        peer.close()
        liar_ctx.destroy(linger=0)


def test_a_peer_churning_200_times_leaves_no_rows_and_no_links(spawn):
    """Rows of departed peers and links to them were kept for ever (a HELLO every interval to each)."""
    a = spawn("a", heartbeat=0.05)  # rows are forgotten 120 intervals after a peer left: 6 s here
    for n in range(200):
        peer = FakeNode(a.endpoint, f"churn{n % 7}")  # names come back, under new ids and endpoints
        try:
            assert peer.hello().type == "WELCOME"
            peer.send("BYE", node_id=peer.node_id, name=peer.name)
        finally:
            peer.close()
    wait_until(lambda: _status(a)["links"] == 0 and sum(_status(a)["peers"].values()) == 0, 30, interval=0.25,
               what="every departed row and link to be dropped")


def test_an_assign_is_checked_like_a_submit(spawn):
    a = spawn("a")
    origin = FakeNode(a.endpoint, "origin")
    try:
        assert origin.hello().type == "WELCOME"
        cases = [
            (dict(stop=["x" * 300] * 16), "stop"),
            (dict(stop=[]), None),  # the same ASSIGN, well-formed: accepted
            (dict(stop=[], resume_ids=[1] * 8), "resume_ids"),
            (dict(stop=[], params={"temperature": "hot"}), "temperature"),
        ]
        for n, (fields, problem) in enumerate(cases):
            base = dict(task_id=f"t{n}", prompt="p q r", max_tokens=8, params={}, model="echo", origin="origin")
            origin.send("ASSIGN", **{**base, **fields})
            reply = origin.recv_type("ACCEPT", "REJECT")
            if problem is None:
                assert reply.type == "ACCEPT", reply
            else:
                assert (reply.type, reply["code"]) == ("REJECT", "bad_request") and problem in reply["message"], reply
    finally:
        origin.close()


def test_the_same_task_id_from_two_origins_runs_twice_and_a_cancel_reaches_only_its_own(spawn):
    """The executor keyed jobs by the bare task id: the second origin's task never ended, and either
    origin's cancel stopped the other's."""
    c = spawn("c", "--echo-rate", "20")
    a = spawn("a", "--peer", c.endpoint)
    b = spawn("b", "--peer", c.endpoint)
    wait_until(lambda: states(a).get("c") == "alive" and states(b).get("c") == "alive", 5, what="mesh")
    with a.client() as client_a, b.client() as client_b:
        stream_a = client_a.submit("one two three", task_id="same", peer="c", max_tokens=30)
        stream_b = client_b.submit("one two three", task_id="same", peer="c", max_tokens=30)
        assert next(stream_a)["type"] == "accepted" and next(stream_b)["type"] == "accepted"
        assert next(stream_a)["type"] == "token" and next(stream_b)["type"] == "token"  # both running on c
        client_b.cancel("same")
        ends_b = [e for e in stream_b if e["type"] in ("done", "error")]
        ends_a = [e for e in stream_a if e["type"] in ("done", "error")]
    assert ends_b[-1]["type"] == "done" and ends_b[-1]["finish_reason"] == "cancelled"
    assert ends_a[-1]["type"] == "done" and ends_a[-1]["finish_reason"] == "length", ends_a


def test_a_flood_of_garbage_frames_writes_a_few_log_lines_not_one_each(spawn):
    a = spawn("a")
    attacker = FakeNode(a.endpoint, "noise")
    try:
        for _ in range(2000):
            attacker.sock.send(b"\x00garbage")
        wait_until(lambda: _status(a)["dropped_frames"] >= 2000, 20, what="every frame to be counted")
        lines = [line for line in a.log_lines if "bad frame" in line]
        assert 1 <= len(lines) <= 3, lines[:5]
    finally:
        attacker.close()
