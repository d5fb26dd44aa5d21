"""32 echo daemons on this machine, each started with one seed: the whole mesh converges, a task reaches every
node, a SIGKILLed and a SIGSTOPped node are judged dead everywhere within the documented bound, and each node
keeps one link per peer.

Once with each membership: the all-to-all heartbeat (the default; docs/protocol.md, "Heartbeats and liveness") and
SWIM (docs/membership.md). Either way every node links to every other, 31 links each: SWIM's partial views start
above 64 live nodes (tests/test_swim_mesh.py covers them). Detection times are read
from the daemons' own log lines (`peer NAME alive -> dead`, stamped when the node decided), not from polling.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest

from conftest import Daemon, alive_names, stop_process, wait_until

NODES = 32
INTERVAL_S = 0.5
"""The daemons' default heartbeat interval."""
DEAD_AFTER = 4
"""The default `dead_after`: silent more than 4 intervals, checked 4 times per interval."""
DEAD_BOUND_S = DEAD_AFTER * INTERVAL_S + INTERVAL_S
"""From the fault to dead at the last observer: 4 silent intervals after the last beat heard (sent at most one
interval before the fault... minus that interval), a quarter interval of checking, and the rest of the interval
for the loop lag of 32 processes on 2 cores (the same bound tests/test_mesh.py holds a 3-node mesh to)."""
SWIM_DEAD_BOUND_S = 4.0
"""The same under `membership = "swim"`: a closed connection (kill) or 1.5 silent heartbeat intervals (freeze)
bring every linked node's probe forward; a failed probe ends its period (0.5 s) as a suspicion, which the many
accusers bring to its floor, 2 periods × log10(32) = 1.5 s; then the verdict's gossip. Measured 2.0–2.75 s; the
rest is for 32 processes on 2 cores (docs/membership.md)."""
DEAD_BOUNDS = {"heartbeat": DEAD_BOUND_S, "swim": SWIM_DEAD_BOUND_S}
CONVERGE_S = 5.0
"""All alive everywhere at most this long after the last daemon started."""


def _dead_at(daemon: Daemon, victim: str) -> float | None:
    """When `daemon` logged `victim` dead (unix seconds, as its log record says), or None."""
    for line in reversed(list(daemon.log_lines)):
        if f"peer {victim} " not in line or "-> dead" not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        message = str(record.get("msg", ""))
        if message.startswith(f"peer {victim} ") and message.endswith("-> dead"):
            return float(record["ts"])
    return None


def _judged_dead(watchers: list[Daemon], victim: str, since: float) -> dict[str, float]:
    """Each watcher's time from `since` to its verdict on `victim`, for those that reached one."""
    found = {}
    for watcher in watchers:
        at = _dead_at(watcher, victim)
        if at is not None and at >= since:
            found[watcher.name] = at - since
    return found


def _start_mesh(spawn, membership: str) -> list[Daemon]:
    """One daemon, then 7 seeded by it, then 24 each seeded by one of the first 8 (started together per wave so
    their imports share both cores)."""
    rng = random.Random(21)
    mode = ("--membership", membership)
    daemons = [spawn("n00", *mode, heartbeat=INTERVAL_S)]
    for wave in (range(1, 8), range(8, NODES)):
        batch = [spawn(f"n{i:02d}", *mode, "--peer", rng.choice(daemons).endpoint, heartbeat=INTERVAL_S,
                       wait=False) for i in wave]
        for daemon in batch:
            daemon.wait_ready()
        daemons += batch
    return daemons


def _stop_all(daemons: list[Daemon]) -> None:
    """SIGTERM to all at once, then wait (one by one, each says BYE and lingers 0.5 s: 16 s in a row)."""
    for daemon in daemons:
        if daemon.proc.poll() is None:
            daemon.proc.terminate()
    for daemon in daemons:
        stop_process(daemon.proc)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("membership", ["heartbeat", "swim"])
def test_32_daemons_converge_detect_a_kill_and_a_freeze_and_keep_one_link_per_peer(spawn, membership) -> None:
    started = time.monotonic()
    daemons = _start_mesh(spawn, membership)
    try:
        _check_the_mesh(daemons, started, DEAD_BOUNDS[membership])
    finally:
        _stop_all(daemons)


def _check_the_mesh(daemons: list[Daemon], started: float, dead_bound_s: float) -> None:
    last_started = max(daemon.ready_at for daemon in daemons)
    names = {daemon.name for daemon in daemons}

    # converged: each node is checked until it lists all 32 alive; the time a check first saw it is an upper
    # bound of when it converged
    waiting = list(daemons)
    while waiting and time.monotonic() - last_started <= CONVERGE_S:
        waiting = [daemon for daemon in waiting if alive_names(daemon) != names]
    converged_s = time.monotonic() - last_started
    assert not waiting, f"{[d.name for d in waiting]} not converged {CONVERGE_S} s after the last daemon started " \
                        f"(start-up of all {NODES}: {last_started - started:.1f} s)"
    assert all(alive_names(daemon) == names for daemon in daemons)  # and it holds

    # one DEALER link per peer: a full mesh below the partial-view threshold (under SWIM, links follow the view
    # once per probe interval, so a member listed a moment ago may be dialled up to 0.5 s later)
    def full_mesh(daemon: Daemon) -> dict | None:
        with daemon.client() as client:
            status = client.status()
        return status if status["links"] == NODES - 1 and status["peers"]["alive"] == NODES - 1 else None

    for daemon in daemons:
        wait_until(lambda: full_mesh(daemon), 2, interval=0.1, what=f"{daemon.name} linked to all {NODES - 1} peers")

    # tasks reach every node: one pinned to each, from one node
    with daemons[9].client() as client:
        for target in daemons:
            done = list(client.submit("ping", max_tokens=2, peer=target.name))[-1]
            assert done["type"] == "done" and done["executed_by"] == target.name, done

    # SIGKILL: every other node judges it dead within the bound
    victim = daemons[17]
    killed_at = time.time()
    victim.kill()
    watchers = [daemon for daemon in daemons if daemon is not victim]
    wait_until(lambda: len(_judged_dead(watchers, victim.name, killed_at)) == len(watchers), dead_bound_s + 10,
               interval=0.05, what=f"every node to judge {victim.name} dead")
    killed = _judged_dead(watchers, victim.name, killed_at)
    assert max(killed.values()) <= dead_bound_s, sorted(killed.items(), key=lambda kv: kv[1])[-3:]

    # SIGSTOP: a frozen node is judged dead too, and is alive everywhere again once it thaws
    frozen = daemons[5]
    watchers = [daemon for daemon in watchers if daemon is not frozen]
    frozen_at = time.time()
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: len(_judged_dead(watchers, frozen.name, frozen_at)) == len(watchers), dead_bound_s + 10,
                   interval=0.05, what=f"every node to judge {frozen.name} dead")
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    stopped = _judged_dead(watchers, frozen.name, frozen_at)
    assert max(stopped.values()) <= dead_bound_s, sorted(stopped.items(), key=lambda kv: kv[1])[-3:]
    live = names - {victim.name}
    wait_until(lambda: all(alive_names(daemon) == live for daemon in (frozen, *watchers[::7])), 10, interval=0.2,
               what=f"{frozen.name} alive again everywhere")
    print(f"\n{NODES} daemons: start-up {last_started - started:.1f} s, converged within {converged_s:.2f} s of the "
          f"last; SIGKILL dead everywhere in {min(killed.values()):.2f}–{max(killed.values()):.2f} s, SIGSTOP in "
          f"{min(stopped.values()):.2f}–{max(stopped.values()):.2f} s (bound {dead_bound_s} s)")
