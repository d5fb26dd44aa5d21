"""`membership = "swim"` on real daemons: SWIM judges liveness, and above `view_threshold` each node links only
to its ring neighbours, dialling any other node on demand when a task goes there.

A mesh of 12 (11 echo daemons and one llama daemon serving the bundled model) with `view_threshold 4` and
`view_rings 1` stands in for a mesh above the threshold: each node keeps 2 view links (its predecessor and
successor on the ring), its seed, and links dialled on demand that close once idle, instead of 11. Every node
still lists every other (models and load travel as gossiped metadata), a task pinned to any node runs there,
the llama model is reached from nodes without a link to it, and a SIGKILLed node is judged dead everywhere.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest

from conftest import Daemon, alive_names, launch, private_env, wait_until
from test_authority import FakeNode

from zmqllm.cli.render import status_lines

NODES = 12
SWIM = ("--membership", "swim", "--view-threshold", "4", "--view-rings", "1", "--heartbeat-interval", "0.5")
VIEW_LINKS = 2
"""One ring: a predecessor and a successor."""
LINK_BOUND = VIEW_LINKS + 1 + 2
"""View links, the seed (never closed), and at most 2 dialled on demand for push-pulls in the last 5 s (one
every 10 s per node, each closed after 5 s idle; replies go back on the asker's own connection)."""
DEAD_BOUND_S = 10.0
"""From a SIGKILL or SIGSTOP to dead at every other node. Only the victim's 2 ring neighbours probe it (and the
nodes linked to it: a closed connection or silent heartbeats bring their probe forward), so its suspicion gets
one confirmation or none: Lifeguard then waits between the floor (1.08 s at 12 nodes) and 4 floors (4.3 s). A
probe period, the indirect probes and gossip come on top: 2.3-5.1 s measured on an idle machine; the rest is for
12 processes sharing 2 cores with other work. docs/membership.md has the figures."""
LLAMA = ("--model", "bundled:gemma3-270m", "--threads", "1", "--ctx", "512")


def _status(daemon: Daemon) -> dict:
    with daemon.client() as client:
        return client.status()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    env = private_env(tmp_path_factory.mktemp("swim-home"))
    daemons: list[Daemon] = []
    try:
        daemons.append(launch(env, "s00", *SWIM, heartbeat=0.5))
        seed = daemons[0].endpoint
        batch = [launch(env, f"s{i:02d}", *SWIM, "--peer", seed, heartbeat=0.5, wait=False)
                 for i in range(1, NODES - 1)]
        batch.append(launch(env, "llm", *SWIM, *LLAMA, "--peer", seed, heartbeat=0.5, engine="llama", wait=False))
        for daemon in batch:
            daemon.wait_ready(60)
        daemons += batch
        names = {daemon.name for daemon in daemons}
        wait_until(lambda: all(alive_names(daemon) == names for daemon in daemons), 20, interval=0.2,
                   what="every node listing all 12 alive")
        yield daemons
    finally:
        for daemon in daemons:
            if daemon.proc.poll() is None:
                daemon.proc.terminate()
        for daemon in daemons:
            daemon.stop()


@pytest.mark.timeout(180)
def test_links_stay_bounded_and_any_node_is_reached_on_demand(mesh: list[Daemon]) -> None:
    # every node lists every other with its models: gossiped metadata, not heartbeats (it links to few)
    for daemon in mesh:
        with daemon.client() as client:
            rows = {row["name"]: row for row in client.peers()}
        assert rows["llm"]["models"] == ["gemma3-270m"] and rows["s03"]["models"] == ["echo"], daemon.name

    # links: the view, the seed, and the few push-pulls of the last seconds; a full mesh would be 11. While the
    # mesh forms, views change as members are learned and links to former view members idle out in 5 s
    def link_counts() -> dict[str, int]:
        return {daemon.name: _status(daemon)["links"] for daemon in mesh}

    counts = wait_until(lambda: (c := link_counts()) and max(c.values()) <= LINK_BOUND and c, 20, interval=0.5,
                        what=f"every node down to at most {LINK_BOUND} links")
    assert sum(counts.values()) < NODES * (NODES - 1) / 2, counts
    status = _status(mesh[1])
    assert status["membership"] == "swim" and status["peers"]["alive"] == NODES - 1
    assert f"links:     {status['links']} (swim membership)" in status_lines(status)

    # a task pinned to each node runs there, from a node that is linked to few of them
    origin = mesh[5]
    with origin.client() as client:
        for target in mesh:
            events = list(client.submit("ping", max_tokens=4, peer=target.name))
            assert events[-1]["type"] == "done" and events[-1]["executed_by"] == target.name, events[-1]

    # the llama model, from every echo node (most have no link to llm until they dial it)
    for daemon in mesh[:-1:3]:
        with daemon.client() as client:
            events = list(client.submit("The capital of France is", model="gemma3-270m", max_tokens=6,
                                        params={"temperature": 0.0}))
        done = events[-1]
        assert done["type"] == "done" and done["executed_by"] == "llm", done
        assert done["usage"]["completion_tokens"] == 6 and done["text"].strip(), done

    # links dialled on demand close once idle again
    wait_until(lambda: _status(origin)["links"] <= LINK_BOUND, 20, interval=0.5,
               what=f"{origin.name}'s on-demand links closing")


def test_forged_and_malformed_swim_messages_are_refused(mesh: list[Daemon]) -> None:
    target, accused, impersonated = mesh[0], mesh[4], mesh[2]
    before = _status(target)
    forger = FakeNode(target.endpoint, "forger")
    try:
        # in another node's name: its connection is its own, whatever src it writes
        forger.send("SWIM_GOSSIP", src=impersonated.ready_event["node_id"],
                    piggyback=[{"n": accused.ready_event["node_id"], "s": "dead", "i": 0,
                                "f": impersonated.ready_event["node_id"]}])
        reply = forger.recv()
        assert reply.type == "ERROR" and reply["code"] == "not_allowed", reply
        # under its own id, but not a SWIM message: an unknown status, a field SWIM does not have
        forger.send("SWIM_GOSSIP", piggyback=[{"n": "zombie", "s": "undead", "i": 1}])
        forger.send("SWIM_SYNC", digest=1, states=[{"n": "x", "s": "alive", "i": 0, "zz": 1}], reply=True)
        wait_until(lambda: _status(target)["dropped_frames"] >= before["dropped_frames"] + 2, 5,
                   what="both malformed messages dropped and counted")
    finally:
        forger.close()
    after = _status(target)
    assert after["refused_messages"] >= before["refused_messages"] + 1
    assert alive_names(target) == {daemon.name for daemon in mesh}  # nobody was buried, nobody made up


def test_a_second_node_with_a_live_name_is_refused(mesh: list[Daemon], tmp_path) -> None:
    taken = mesh[3].name
    impostor = launch(private_env(tmp_path / "home"), taken, *SWIM, "--peer", mesh[0].endpoint, heartbeat=0.5,
                      wait=False)
    try:
        assert impostor.proc.wait(20) != 0
    finally:
        impostor.stop()
    assert any(f"name {taken!r} is already used" in line for line in impostor.log_lines), impostor.log()
    assert alive_names(mesh[0]) == {daemon.name for daemon in mesh}


def _dead_at(daemon: Daemon, victim: str) -> float | None:
    for line in reversed(list(daemon.log_lines)):
        if f"peer {victim} " in line and "-> dead" in line:
            try:
                return float(json.loads(line)["ts"])
            except (ValueError, KeyError):
                continue
    return None


@pytest.mark.timeout(120)
def test_a_killed_node_is_judged_dead_everywhere_and_a_frozen_one_comes_back(mesh: list[Daemon]) -> None:
    victim, frozen = mesh[7], mesh[3]
    watchers = [daemon for daemon in mesh if daemon not in (victim, frozen)]
    killed_at = time.time()
    victim.kill()
    wait_until(lambda: all((_dead_at(w, victim.name) or 0) >= killed_at for w in watchers), DEAD_BOUND_S + 10,
               interval=0.1, what=f"every node to judge {victim.name} dead")
    took = {w.name: _dead_at(w, victim.name) - killed_at for w in watchers}
    assert max(took.values()) <= DEAD_BOUND_S, sorted(took.items(), key=lambda kv: kv[1])[-3:]

    frozen_at = time.time()
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: all((_dead_at(w, frozen.name) or 0) >= frozen_at for w in watchers), DEAD_BOUND_S + 10,
                   interval=0.1, what=f"every node to judge {frozen.name} dead")
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    stopped = {w.name: _dead_at(w, frozen.name) - frozen_at for w in watchers}
    assert max(stopped.values()) <= DEAD_BOUND_S, sorted(stopped.items(), key=lambda kv: kv[1])[-3:]
    live = {daemon.name for daemon in mesh} - {victim.name}
    wait_until(lambda: all(alive_names(daemon) == live for daemon in (frozen, *watchers[::4])), 15, interval=0.2,
               what=f"{frozen.name} alive again everywhere (it refutes with a new incarnation)")
    print(f"\nswim, {NODES} nodes, view_rings 1: SIGKILL dead everywhere in {min(took.values()):.2f}–"
          f"{max(took.values()):.2f} s, SIGSTOP in {min(stopped.values()):.2f}–{max(stopped.values()):.2f} s "
          f"(bound {DEAD_BOUND_S} s)")
