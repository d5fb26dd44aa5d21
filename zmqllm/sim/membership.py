"""The SWIM membership (`zmqllm.core.swim`) on a simulated clock and network, against today's all-to-all heartbeat.

Each node is the real pure module; only the clock (a heap of events) and the network (per-message loss, a
uniform delay, partitions, crashed or frozen nodes) are simulated, so 1,000 nodes run in seconds and every run
with the same seed is the same run. Nothing is logged per message: the loop is the cost.

`run_membership` reports, at one N and one loss rate:
- detection of a crash: each live node's first "dead" (median, p99) and the time until all agree;
- false deaths: a live node declared dead by another's own timer, per node-day, over a fault-free stretch;
- messages and bytes each node sends per second in that stretch (msgpack sizes, envelope included);
- whole-mesh agreement after a join, and after a partition heals;
- the same figures for all-to-all heartbeats (each node beats to every other each 0.5 s, dead after 4 missed
  beats), modelled in closed form at the same N, loss and duration, with its messages sized as real HEARTBEATs.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack

from zmqllm.core import protocol
from zmqllm.core.swim import UP, Change, Message, Outgoing, Swim, SwimConfig, to_fields

Progress = Callable[[str], None]

DAY_S = 86_400.0
HEARTBEAT_INTERVAL_S = 0.5
"""Today's heartbeat (`core.membership.Liveness`): every node to every other node, each interval."""
HEARTBEAT_DEAD_AFTER = 4
"""Missed beats in a row that make a peer dead today (dead after 4 silent intervals)."""
HEARTBEAT_CHECKS_PER_INTERVAL = 4
"""Today's daemon judges liveness four times per interval."""
WARMUP_S = 5.0
"""Simulated seconds before anything is measured: first probes and shuffles settle."""
DETECT_WAIT_S = 60.0
JOIN_WAIT_S = 30.0
HEAL_WAIT_S = 180.0
"""How long a phase may take before it is reported as not done (a figure of None, and the goal unmet)."""
PROGRESS_EVERY_S = 5.0
"""Wall seconds between progress lines."""
GOALS = {"detect_median_s": 5.0, "false_deaths_per_node_day": 1.0, "join_agree_median_s": 3.0,
         "msgs_per_node_s": 8.0}
"""The goals at 1,000 nodes (docs/membership.md): detection ≤ 5 s median, < 1 false death per node-day, join
agreement ≤ 3 s median, and per-node messages flat in N (≤ 8/s: twice the 4/s floor of one ping and one ack
sent per 0.5 s period)."""


@dataclass(frozen=True)
class SimSettings:
    nodes: int
    loss: float = 0.0
    seed: int = 1
    node_days: float = 1.0
    """Fault-free exposure for false deaths (node-days); the stretch is node_days / N days, within bounds."""
    crashes: int = 3
    """Crash trials, each followed by a join."""
    partition_s: float = 20.0
    partition_nodes: int | None = None
    """Nodes cut off from the rest; default: a rack behind a failed switch, 10 % of the mesh and at most 20.
    (Bigger splits are valid; a half-and-half split makes every node the other half declared dead refute once
    it heals, since neither side defers, and simulating that at 1,000 nodes takes minutes here.)"""
    delay_s: tuple[float, float] = (0.0005, 0.005)
    min_steady_s: float = 60.0
    max_steady_s: float = 14_400.0

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ValueError(f"a mesh needs at least 2 nodes, got {self.nodes}")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss is a probability in [0, 1), got {self.loss}")
        if self.partition_nodes is not None and not 0 < self.partition_nodes < self.nodes:
            raise ValueError(f"the partition cuts off 1..{self.nodes - 1} nodes, got {self.partition_nodes}")

    @property
    def cut_off(self) -> int:
        return self.partition_nodes or min(20, max(1, round(self.nodes * 0.1)))

    @property
    def steady_s(self) -> float:
        return min(max(self.node_days * DAY_S / self.nodes, self.min_steady_s), self.max_steady_s)


class Mesh:
    """N `Swim` nodes on one simulated clock. Messages to a node that is not running are lost; a partition
    drops messages between groups."""

    def __init__(self, size: int, loss: float, seed: int, config: SwimConfig = SwimConfig(),
                 delay_s: tuple[float, float] = (0.0005, 0.005)) -> None:
        self.now = 0.0
        self.config = config
        self.loss = loss
        self.delay_s = delay_s
        self.seed = seed
        self.nodes: dict[str, Swim] = {}
        self.running: set[str] = set()
        self.groups: dict[str, int] = {}
        self.sent_messages = 0
        self.sent_bytes = 0
        self.count_bytes = False
        """Size every message (msgpack) only while a measurement needs it: sizing is most of a storm's cost."""
        self.events = 0
        self.halt = False
        """Set by a watcher to stop `run_until` early (the awaited condition is reached)."""
        self.watch: Watch | None = None
        self.drops: Callable[[str, str, Message], bool] | None = None
        """A test's own fault on top of loss and partitions: (sender, receiver, message) → lose it."""
        self._rng = random.Random(f"network/{seed}")
        self._heap: list[tuple[float, int, str, str | None, Message | None]] = []
        self._order = itertools.count()
        self._tick_at: dict[str, float] = {}
        self._by_address: dict[str, str] = {}
        ids = [self._new_id() for _ in range(size)]
        members = [(node, _address(i)) for i, node in enumerate(ids)]
        for node, address in members:
            self._start(node, address).preload(members, self.now)
        for node in ids:
            self._schedule(node)

    def _new_id(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"  # as a daemon's node id: 8 random bytes in hex

    def _start(self, node: str, address: str) -> Swim:
        swim = Swim(node, address, self.now, random.Random(f"{self.seed}/{node}"), self.config)
        self.nodes[node] = swim
        self.running.add(node)
        self._by_address[address] = node
        return swim

    # -- faults and arrivals ----------------------------------------------------------------------------------

    def crash(self, node: str) -> None:
        """Stop a node for good (a SIGKILL, or a SIGSTOP never continued: its messages are lost)."""
        self.running.discard(node)
        if self.watch is not None:
            self.watch.truth_changed(node, up=False)

    def add_node(self, seed: str) -> str:
        """Start a new node that joins through `seed` (a running node); returns its id."""
        node = self._new_id()
        swim = self._start(node, _address(len(self.nodes)))
        if self.watch is not None:
            self.watch.node_added(node)
        self._send(node, swim.join(self.now, [self.nodes[seed].address]))
        self._schedule(node)
        return node

    def leave(self, node: str) -> None:
        """The node says goodbye (SIGTERM); it keeps running, so its goodbye is gossiped, until `crash`."""
        self._send(node, self.nodes[node].leave(self.now))
        self._schedule(node)

    def partition(self, side: set[str]) -> None:
        self.groups = {node: int(node in side) for node in self.nodes}

    def heal(self) -> None:
        self.groups = {}

    # -- the loop -----------------------------------------------------------------------------------------------

    def run_until(self, until: float) -> None:
        """Process events up to `until` (or until a watcher sets `halt`)."""
        heap, running, nodes, tick_at, watch = self._heap, self.running, self.nodes, self._tick_at, self.watch
        self.halt = False
        while heap and heap[0][0] <= until and not self.halt:
            at, _, node, sender, message = heapq.heappop(heap)
            if node not in running:
                continue
            swim = nodes[node]
            if sender is None:
                if tick_at.get(node) != at:
                    continue  # superseded by an earlier wake-up
                tick_at[node] = math.inf
                self.now = at
                out = swim.tick(at)
            else:
                self.now = at
                out = swim.receive(at, sender, message)
            self.events += 1
            if out:
                self._send(node, out)
            changes = swim.take_changes()
            if changes and watch is not None:
                watch.changed(node, changes, at)
            self._schedule(node)
        if not self.halt:
            self.now = until

    def _schedule(self, node: str) -> None:
        wake = max(self.nodes[node].next_wakeup(), self.now)
        if wake < self._tick_at.get(node, math.inf):
            self._tick_at[node] = wake
            heapq.heappush(self._heap, (wake, next(self._order), node, None, None))

    def _send(self, sender: str, out: list[Outgoing]) -> None:
        rng, loss, groups = self._rng, self.loss, self.groups
        low, high = self.delay_s
        for outgoing in out:
            self.sent_messages += 1
            if self.count_bytes:
                self.sent_bytes += wire_bytes(sender, outgoing.message)
            to = outgoing.to or self._by_address.get(outgoing.address)
            if to is None or (loss and rng.random() < loss) or (groups and groups[sender] != groups[to]) \
                    or (self.drops is not None and self.drops(sender, to, outgoing.message)):
                continue
            heapq.heappush(self._heap, (self.now + rng.uniform(low, high), next(self._order), to, sender,
                                        outgoing.message))


def _address(index: int) -> str:
    return f"tcp://10.{index // 65536}.{index // 256 % 256}.{index % 256}:5555"


_ENVELOPE = {"v": protocol.PROTOCOL_VERSION, "id": 1 << 20}
"""The protocol envelope every message carries (a message id of a busy node: 5 bytes)."""


def wire_bytes(sender: str, message: Message) -> int:
    """The message's msgpack size as the daemon would send it (envelope included)."""
    kind, body = to_fields(message)
    return len(msgpack.packb({**_ENVELOPE, "t": kind, "src": sender, **body}, use_bin_type=True))


# -- watching what the nodes believe ------------------------------------------------------------------------


@dataclass
class _Crash:
    victim: str
    at: float
    observers: set[str]
    detected: dict[str, float] = field(default_factory=dict)
    all_at: float | None = None


@dataclass
class _Join:
    node: str
    at: float
    have: int = 0
    """Running nodes (the newcomer aside) that list the newcomer as up."""
    done_at: float | None = None


class Watch:
    """Keeps, as changes come, how many (observer, member) beliefs disagree with the truth (`wrong`): a node
    should see exactly the running nodes as up. Zero means the whole mesh agrees."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.wrong: dict[str, int] = dict.fromkeys(mesh.nodes, 0)  # a preloaded mesh agrees
        self.total_wrong = 0
        self.counting_false_deaths = False
        """Count first-hand verdicts on running nodes (only in fault-free stretches)."""
        self.false_deaths = 0
        self.false_suspicions = 0
        self.crash: _Crash | None = None
        self.join: _Join | None = None
        self.await_agreement = False
        self.agreed_at: float | None = None

    def _up(self, observer: str, member: str) -> bool:
        return self.mesh.nodes[observer].state_of(member) in UP

    def truth_changed(self, node: str, up: bool) -> None:
        """A node stopped (or started): every running observer's belief about it flips between right and wrong."""
        if not up:
            self.total_wrong -= self.wrong.pop(node, 0)
        for observer in self.mesh.running:
            if observer != node:
                delta = 1 if self._up(observer, node) != up else -1
                self.wrong[observer] += delta
                self.total_wrong += delta

    def node_added(self, node: str) -> None:
        mesh = self.mesh
        self.wrong[node] = sum(1 for other in mesh.nodes if other != node
                               and self._up(node, other) != (other in mesh.running))
        self.total_wrong += self.wrong[node]
        self.truth_changed(node, up=True)

    def changed(self, observer: str, changes: list[Change], now: float) -> None:
        running = self.mesh.running
        for change in changes:
            truth = change.node in running
            before, after = change.old in UP, change.new in UP
            delta = (after != truth) - (before != truth)
            self.wrong[observer] += delta
            self.total_wrong += delta
            if change.first_hand and truth and self.counting_false_deaths:
                if change.new == "dead":
                    self.false_deaths += 1
                elif change.new == "suspect":
                    self.false_suspicions += 1
            self._track(observer, change, now)
        if self.await_agreement and self.total_wrong == 0:
            self.agreed_at, self.await_agreement, self.mesh.halt = now, False, True

    def _track(self, observer: str, change: Change, now: float) -> None:
        crash, join = self.crash, self.join
        if crash is not None and change.node == crash.victim and change.new not in UP:
            if observer in crash.observers and observer not in crash.detected:
                crash.detected[observer] = now - crash.at
                if len(crash.detected) == len(crash.observers):
                    crash.all_at, self.mesh.halt = now - crash.at, True
        if join is None or join.done_at is not None:
            return
        if change.node == join.node:
            join.have += (change.new in UP) - (change.old in UP)
        if (observer == join.node or change.node == join.node) and self.wrong[join.node] == 0 \
                and join.have == len(self.mesh.running) - 1:
            join.done_at, self.mesh.halt = now - join.at, True


# -- the scenario ---------------------------------------------------------------------------------------------


def run_membership(settings: SimSettings, progress: Progress = lambda line: None,
                   config: SwimConfig = SwimConfig()) -> dict[str, Any]:
    """One seeded run at one N and loss: the report `zmqllm sim membership --json` prints."""
    started = time.perf_counter()
    mesh = Mesh(settings.nodes, settings.loss, settings.seed, config, settings.delay_s)
    watch = mesh.watch = Watch(mesh)
    chooser = random.Random(f"scenario/{settings.seed}")
    clock = _ProgressClock(progress, mesh, settings.nodes)
    mesh.run_until(WARMUP_S)

    clock.say(f"steady: {settings.steady_s:,.0f} simulated s without faults (false deaths, traffic)")
    watch.counting_false_deaths = mesh.count_bytes = True
    steady_from, messages, sent = mesh.now, mesh.sent_messages, mesh.sent_bytes
    clock.run(mesh.now + settings.steady_s)
    steady_s = mesh.now - steady_from
    traffic = {"msgs_per_node_s": (mesh.sent_messages - messages) / settings.nodes / steady_s,
               "bytes_per_node_s": (mesh.sent_bytes - sent) / settings.nodes / steady_s}
    node_days = settings.nodes * steady_s / DAY_S
    false_deaths = watch.false_deaths
    watch.counting_false_deaths = mesh.count_bytes = False

    detections, all_agree, joins = [], [], []
    for trial in range(settings.crashes):
        clock.say(f"crash {trial + 1}/{settings.crashes}, then a join")
        detected, agreed = _crash_trial(mesh, watch, chooser)
        detections += detected
        all_agree.append(agreed)
        joins.append(_join_trial(mesh, watch, chooser))
    clock.say(f"partition: {settings.cut_off} nodes cut off for {settings.partition_s:g} s, then healed")
    heal_s = _partition_trial(mesh, watch, chooser, settings)

    swim = {
        **{key: round(value, 2) for key, value in traffic.items()},
        "detect_median_s": _round(_percentile(detections, 50)),
        "detect_p99_s": _round(_percentile(detections, 99)),
        "detect_all_median_s": _round(_median_or_none(all_agree)),
        "detect_all_max_s": _round(max(all_agree) if None not in all_agree and all_agree else None),
        "false_deaths": false_deaths,
        "false_suspicions": watch.false_suspicions,
        "node_days": round(node_days, 3),
        "false_deaths_per_node_day": round(false_deaths / node_days, 3),
        "join_agree_median_s": _round(_median_or_none(joins)),
        "join_agree_max_s": _round(max(joins) if None not in joins and joins else None),
        "heal_converge_s": _round(heal_s),
    }
    baseline = all_to_all(settings.nodes, settings.loss, steady_s, random.Random(f"heartbeat/{settings.seed}"))
    figures = {**swim, "all_to_all": baseline, "lan3_freeze_detect_s": lan_freeze_detection(seed=settings.seed),
               "sim_events": mesh.events, "wall_s": round(time.perf_counter() - started, 2)}
    checks = {
        "detect_median_s": swim["detect_median_s"] is not None and swim["detect_median_s"] <= GOALS["detect_median_s"],
        "false_deaths_per_node_day": swim["false_deaths_per_node_day"] < GOALS["false_deaths_per_node_day"],
        "join_agree_median_s": swim["join_agree_median_s"] is not None
        and swim["join_agree_median_s"] <= GOALS["join_agree_median_s"],
        "msgs_per_node_s": swim["msgs_per_node_s"] <= GOALS["msgs_per_node_s"],
        "heal_converge_s": swim["heal_converge_s"] is not None,
    }
    settings_json = {**asdict(settings), "partition_nodes": settings.cut_off, "steady_s": round(steady_s, 1),
                     "config": asdict(config)}
    return {"name": "membership", "settings": settings_json, "figures": figures,
            "ratio": round(swim["msgs_per_node_s"] / baseline["msgs_per_node_s"], 4),
            "goal": ("detection median ≤ 5 s, < 1 false death per node-day, join agreement median ≤ 3 s, "
                     "the mesh agrees again after a partition heals, ≤ 8 messages per node per second; "
                     "ratio = SWIM ÷ all-to-all messages per node per second"),
            "checks": checks, "met": all(checks.values())}


def _crash_trial(mesh: Mesh, watch: Watch, chooser: random.Random) -> tuple[list[float], float | None]:
    victim = chooser.choice(sorted(mesh.running))
    mesh.crash(victim)
    watch.crash = crash = _Crash(victim, mesh.now, set(mesh.running))
    if crash.observers:
        mesh.run_until(mesh.now + DETECT_WAIT_S)
    watch.crash = None
    return list(crash.detected.values()), crash.all_at


def _join_trial(mesh: Mesh, watch: Watch, chooser: random.Random) -> float | None:
    seed = chooser.choice(sorted(mesh.running))
    watch.join = join = _Join("", mesh.now)
    join.node = mesh.add_node(seed)
    mesh.run_until(mesh.now + JOIN_WAIT_S)
    watch.join = None
    mesh.run_until(mesh.now + 2.0)  # let the join's rumors settle before the next trial
    return join.done_at


def _partition_trial(mesh: Mesh, watch: Watch, chooser: random.Random, settings: SimSettings) -> float | None:
    members = sorted(mesh.running)
    side = set(chooser.sample(members, min(settings.cut_off, len(members) - 1)))
    mesh.partition(side)
    mesh.run_until(mesh.now + settings.partition_s)
    mesh.heal()
    healed_at = mesh.now
    watch.await_agreement, watch.agreed_at = watch.total_wrong != 0, None
    if not watch.await_agreement:
        return 0.0
    mesh.run_until(mesh.now + HEAL_WAIT_S)
    watch.await_agreement = False
    return None if watch.agreed_at is None else watch.agreed_at - healed_at


class _ProgressClock:
    """Progress lines on long runs: each phase, and the simulated time every few wall seconds."""

    def __init__(self, progress: Progress, mesh: Mesh, nodes: int) -> None:
        self.progress, self.mesh, self.nodes = progress, mesh, nodes
        self.started = time.perf_counter()

    def say(self, line: str) -> None:
        self.progress(f"membership N={self.nodes}: {line} [{time.perf_counter() - self.started:.1f} s]")

    def run(self, until: float) -> None:
        step = max(10.0, (until - self.mesh.now) / 20)
        last = time.perf_counter()
        while self.mesh.now < until:
            self.mesh.run_until(min(until, self.mesh.now + step))
            if time.perf_counter() - last >= PROGRESS_EVERY_S:
                last = time.perf_counter()
                self.say(f"simulated {self.mesh.now:,.0f} of {until:,.0f} s")


def lan_freeze_detection(seed: int = 1, trials: int = 20) -> float:
    """Median seconds until both other nodes of a 3-node LAN mesh (no loss) judge a frozen node dead (today's
    heartbeat: 2.0–2.1 s)."""
    times = []
    for trial in range(trials):
        mesh = Mesh(3, 0.0, seed * 1000 + trial)
        watch = mesh.watch = Watch(mesh)
        mesh.run_until(WARMUP_S + trial * 0.05)
        detected, agreed = _crash_trial(mesh, watch, random.Random(trial))
        if agreed is not None:
            times.append(agreed)
    return round(statistics.median(times), 2) if times else math.inf


# -- today's all-to-all heartbeat, modelled --------------------------------------------------------------------


def heartbeat_bytes() -> int:
    """A real HEARTBEAT frame of a one-model node (identity, load, digest, envelope)."""
    beat = protocol.make("HEARTBEAT", src="0123456789abcdef", id=1 << 20, node_id="0123456789abcdef",
                         name="node-0042", endpoint=_address(42), models=["gemma3-270m-q4-k-m"], slots=4,
                         ctx=0, chat=False, load={"active": 1, "queued": 0, "slots": 4, "tok_s": 85.5},
                         digest="0123456789abcdef")
    return len(protocol.encode(beat))


def all_to_all(nodes: int, loss: float, seconds: float, rng: random.Random) -> dict[str, Any]:
    """Every node beats to every other each 0.5 s; a peer is dead after 4 missed beats in a row.

    False deaths: each ordered pair sees `seconds / 0.5` beats; a run of 4 losses after a received beat
    starts with odds (1 − loss)·loss⁴, so deaths are Poisson with that mean over all pairs (drawn here, same
    seed). Detection of a crash by each observer: 2 s after the last beat it received, at its next liveness
    check (every interval / 4); the last beat left up to one interval before the crash, earlier if the last
    ones were lost."""
    beats = seconds / HEARTBEAT_INTERVAL_S
    expected = nodes * (nodes - 1) * beats * (1 - loss) * loss ** HEARTBEAT_DEAD_AFTER
    deaths = _poisson(rng, expected)
    dead_s, check_s = HEARTBEAT_INTERVAL_S * HEARTBEAT_DEAD_AFTER, HEARTBEAT_INTERVAL_S / HEARTBEAT_CHECKS_PER_INTERVAL
    detections = []
    for _ in range(max(nodes - 1, 1)):
        lost = 0
        while rng.random() < loss:
            lost += 1
        age = rng.uniform(0, HEARTBEAT_INTERVAL_S) + lost * HEARTBEAT_INTERVAL_S
        detections.append(max(0.0, dead_s - age + rng.uniform(0, check_s)))
    msgs = (nodes - 1) / HEARTBEAT_INTERVAL_S
    return {"msgs_per_node_s": round(msgs, 2), "bytes_per_node_s": round(msgs * heartbeat_bytes(), 1),
            "false_deaths": deaths, "false_deaths_expected": round(expected, 3),
            "false_deaths_per_node_day": round(deaths / (nodes * seconds / DAY_S), 3),
            "detect_median_s": _round(_percentile(detections, 50)),
            "detect_p99_s": _round(_percentile(detections, 99)), "detect_all_s": _round(max(detections))}


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    count, threshold, product = 0, math.exp(-mean), rng.random()
    while product > threshold:
        count += 1
        product *= rng.random()
    return count


def _percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))]


def _median_or_none(values: list[float | None]) -> float | None:
    return None if not values or None in values else statistics.median(values)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def summary(report: dict[str, Any]) -> str:
    """The human summary `zmqllm sim membership` prints."""
    s, f, base = report["settings"], report["figures"], report["figures"]["all_to_all"]

    def seconds(value: float | None) -> str:
        return "not reached" if value is None else f"{value:.2f} s"

    lines = [
        f"SWIM membership, N={s['nodes']}, loss {s['loss']:.1%}, seed {s['seed']} "
        f"({f['sim_events']:,} events in {f['wall_s']:.1f} s)",
        f"  crash detected   median {seconds(f['detect_median_s'])}, p99 {seconds(f['detect_p99_s'])}, "
        f"all agree {seconds(f['detect_all_median_s'])} (median of {s['crashes']})",
        f"  false deaths     {f['false_deaths']} in {f['node_days']} node-days = "
        f"{f['false_deaths_per_node_day']} per node-day ({f['false_suspicions']} suspicions refuted or confirmed)",
        f"  traffic          {f['msgs_per_node_s']} msgs, {f['bytes_per_node_s']:,.0f} B per node per second",
        f"  join agreement   median {seconds(f['join_agree_median_s'])}, max {seconds(f['join_agree_max_s'])}",
        f"  partition heal   {seconds(f['heal_converge_s'])} to agree again ({s['partition_nodes']} nodes cut off "
        f"for {s['partition_s']:g} s)",
        f"  3-node LAN       frozen peer judged dead in {f['lan3_freeze_detect_s']} s (median)",
        f"all-to-all heartbeat at the same N and loss:",
        f"  crash detected   median {seconds(base['detect_median_s'])}, all {seconds(base['detect_all_s'])}",
        f"  false deaths     {base['false_deaths']} = {base['false_deaths_per_node_day']} per node-day",
        f"  traffic          {base['msgs_per_node_s']} msgs, {base['bytes_per_node_s']:,.0f} B per node per second",
        f"ratio (SWIM ÷ all-to-all msgs per node per second): {report['ratio']}",
        f"goal: {report['goal']}: {'met' if report['met'] else 'NOT met'}"
        + ("" if report["met"] else f" ({', '.join(k for k, ok in report['checks'].items() if not ok)})"),
    ]
    return "\n".join(lines)
