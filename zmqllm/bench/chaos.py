"""`zmqllm bench chaos`: the mesh under random faults, every stream checked at the end (the Jepsen way).

N echo daemons (real processes on free ports) serve several concurrent clients, each submitting streams in a
loop to a random serving node. A fault-free phase first measures the latency of that load; then a seeded
schedule hits one random node every few seconds, whatever its role: SIGKILL, SIGSTOP (SIGCONT a few seconds
later), or the restart of a killed node on its old port and name, always leaving at least two nodes serving.
The echo engine's text is a function of the prompt, so afterwards every task is judged: each token once, in
order, the uninterrupted text, exactly one ending, and no daemon process left behind. A task that fails with a
reason (no node answered it) is counted, not a violation.

The schedule and the checks are pure functions (`plan_faults`, `check_task`, `summarize`); the rest drives
processes and clients. Workflow runs go on meanwhile (bench/chaos_runs.py): each must end once with the echo's
output, and no run may be finished by two nodes. Not covered yet: network partitions (tests/test_netns.py has
the partitioned orchestrator).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from zmqllm.bench import chaos_runs
from zmqllm.bench.mesh import expected_echo
from zmqllm.client import AsyncClient, MeshUnreachable

Progress = Callable[[str], None]

READY_TIMEOUT_S = 30.0
"""Longest wait for a daemon's ready line (a restart included) or for the mesh to form."""
TASK_BOUND_S = 30.0
"""Longest one task may take, its moves included: past it the task hung (a violation), the bench goes on."""
STOP_TIMEOUT_S = 10.0
"""Longest a daemon has to stop on SIGTERM before SIGKILL."""
RESTART_GRACE_S = 2.0
"""How long the schedule counts a restarted node as not yet serving (it starts in ≈ 0.3 s on 2 cores)."""
PROGRESS_EVERY_S = 5.0
CLIENT_TIMEOUT_S = 1.0
"""The clients' timeout: a frozen node is left after this much silence."""
MIN_SERVING = 2
"""Nodes always left running and not stopped, so the mesh can serve at every moment."""
ECHO_RATE = 100.0
TOKENS = (20, 120)
"""Range of max_tokens drawn for each task."""
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett", "kilo",
         "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor",
         "whiskey", "xray", "yankee", "zulu", "one", "two", "three", "four", "five", "six", "seven", "eight")


@dataclass(frozen=True)
class ChaosSettings:
    nodes: int = 5
    duration_s: float = 120.0
    """Seconds of faults (the calm phase comes before them)."""
    seed: int = 0
    clients: int = 4
    run_clients: int = 1
    """Clients following workflow runs, one run after another, besides the `clients` streaming tasks."""
    fault_every: tuple[float, float] = (1.0, 3.0)
    stop_for: tuple[float, float] = (1.0, 3.0)
    heartbeat_s: float = 0.5
    calm_s: float = 15.0
    echo_rate: float = ECHO_RATE
    tokens: tuple[int, int] = TOKENS
    client_timeout_s: float = CLIENT_TIMEOUT_S

    def as_json(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "duration_s": self.duration_s, "seed": self.seed, "clients": self.clients,
                "run_clients": self.run_clients,
                "fault_every_s": list(self.fault_every), "stop_for_s": list(self.stop_for),
                "heartbeat_interval_s": self.heartbeat_s, "calm_s": self.calm_s, "echo_rate": self.echo_rate,
                "max_tokens": list(self.tokens), "client_timeout_s": self.client_timeout_s,
                "min_serving": MIN_SERVING, "engine": "echo"}


def default_calm_s(duration_s: float) -> float:
    """The fault-free phase: a sixth of the faults' time, 5 to 20 s."""
    return min(20.0, max(5.0, duration_s / 6))


def parse_interval(text: str) -> tuple[float, float]:
    """"1-3" -> (1.0, 3.0), "2" -> (2.0, 2.0); ValueError naming what is wrong."""
    low, _, high = text.partition("-")
    try:
        bounds = (float(low), float(high or low))
    except ValueError:
        raise ValueError(f"{text!r} is not MIN-MAX seconds (e.g. 1-3)") from None
    if not 0 < bounds[0] <= bounds[1]:
        raise ValueError(f"{text!r}: need 0 < MIN <= MAX")
    return bounds


# -- the fault schedule (pure) -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fault:
    at_s: float
    """Seconds after the faults begin."""
    kind: str
    """kill (SIGKILL), stop (SIGSTOP for `hold_s`, then SIGCONT) or restart (of a killed node)."""
    node: str
    hold_s: float = 0.0


def plan_faults(names: Sequence[str], duration_s: float, every: tuple[float, float], stop_for: tuple[float, float],
                seed: int, min_serving: int = MIN_SERVING) -> list[Fault]:
    """The whole schedule from the seed alone, so a seed replays it: one fault every `every` seconds, never
    one that would leave fewer than `min_serving` nodes serving (a stopped node serves again after its hold, a
    restarted one RESTART_GRACE_S after its restart). A moment where no fault is allowed passes without one."""
    rng = random.Random(seed)
    killed: set[str] = set()
    back_at: dict[str, float] = {}  # stopped or restarting node -> when it serves again
    faults: list[Fault] = []
    at = rng.uniform(*every)
    while at < duration_s:
        back_at = {name: t for name, t in back_at.items() if t > at}
        serving = [n for n in names if n not in killed and n not in back_at]
        kinds = (["kill", "stop"] if len(serving) > min_serving else []) + (["restart"] if killed else [])
        if kinds:
            kind = rng.choice(kinds)
            if kind == "restart":
                node = rng.choice(sorted(killed))
                killed.discard(node)
                back_at[node] = at + RESTART_GRACE_S
                faults.append(Fault(round(at, 3), kind, node))
            elif kind == "kill":
                node = rng.choice(serving)
                killed.add(node)
                faults.append(Fault(round(at, 3), kind, node))
            else:
                node, hold = rng.choice(serving), round(rng.uniform(*stop_for), 3)
                back_at[node] = at + hold
                faults.append(Fault(round(at, 3), kind, node, hold))
        at += rng.uniform(*every)
    return faults


# -- judging the tasks (pure) ------------------------------------------------------------------------------

@dataclass
class TaskRecord:
    """One task as its client saw it: every event, in order, and when it was submitted and ended."""

    task_id: str
    prompt: str
    max_tokens: int
    node: str
    submitted: float
    events: list[dict[str, Any]] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    """When each event arrived (monotonic s)."""
    ended: float | None = None
    gave_up: str | None = None
    """Why the client stopped without an ending: `unreachable: …` (no node answered), `hung` (TASK_BOUND_S
    passed) or `client error: …`."""


@dataclass(frozen=True)
class Verdict:
    lost: int
    """Tokens a done task should have (max_tokens: no task is cancelled or stopped early) and never got."""
    duplicated: int
    reordered: int
    """Tokens arriving after one with a higher seq."""
    mismatched: str
    """Why the text or the done's account differs from the echo's, or ""."""
    endings: int
    ended_once: bool
    """Exactly one done or error, the last event; or the client gave up with a reason (no node answered)."""
    outcome: str
    """"done", or the failure's reason: the error's code, or `unreachable`."""

    @property
    def violated(self) -> bool:
        return bool(self.lost or self.duplicated or self.reordered or self.mismatched or not self.ended_once)


def check_task(record: TaskRecord) -> Verdict:
    """Judge one task's stream against the echo engine's deterministic text."""
    events = record.events
    tokens = [e for e in events if e["type"] == "token"]
    seqs = [t["seq"] for t in tokens]
    words = [w + " " for w in record.prompt.split()]
    wrong = [t["seq"] for t in tokens if not 0 <= t["seq"] < record.max_tokens
             or t["text"] != words[t["seq"] % len(words)]]
    endings = [i for i, e in enumerate(events) if e["type"] in ("done", "error")]
    final = events[endings[0]] if endings else None
    mismatched = f"token text wrong at seq {wrong[:5]}" if wrong else ""
    lost = 0
    if final is not None and final["type"] == "done":
        lost = record.max_tokens - len(set(seqs) & set(range(record.max_tokens)))
        used = (final.get("usage") or {}).get("completion_tokens")
        if final.get("text") != expected_echo(record.prompt, record.max_tokens):
            mismatched = mismatched or f"done text differs ({final.get('finish_reason')})"
        elif used != record.max_tokens:
            mismatched = mismatched or f"done usage says {used} tokens of {record.max_tokens}"
    gave_up = record.gave_up or ""
    ended_once = (len(endings) == 1 and endings[0] == len(events) - 1) or (
        not endings and gave_up.startswith("unreachable"))
    if final is not None:
        outcome = "done" if final["type"] == "done" else str(final.get("code"))
    else:
        outcome = gave_up.split(":")[0] or "no ending"
    return Verdict(lost, len(seqs) - len(set(seqs)), sum(1 for a, b in zip(seqs, seqs[1:]) if b < a),
                   mismatched, len(endings), ended_once, outcome)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1); None for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def _latency(judged: Sequence[tuple[TaskRecord, Verdict]]) -> dict[str, Any]:
    """p50 and p99 of submit-to-done, done tasks only."""
    spans = [r.ended - r.submitted for r, v in judged if r.ended is not None and v.outcome == "done"]
    p50, p99 = percentile(spans, 0.5), percentile(spans, 0.99)
    return {"tasks": len(spans), "p50_s": None if p50 is None else round(p50, 3),
            "p99_s": None if p99 is None else round(p99, 3)}


def trace(record: TaskRecord, since: float, names: dict[str, str]) -> list[str]:
    """A task's events in short, for a violation's report: times in s after `since` (the faults' start, as in
    the timeline), runs of tokens folded, endpoints by node name."""
    lines: list[str] = []
    run: list[int] = []

    def fold() -> None:
        if run:
            lines.append(f"tokens {run[0]}..{run[-1]}" if run == list(range(run[0], run[-1] + 1)) else
                         f"tokens {run}")
            run.clear()

    for event, stamp in zip(record.events, record.stamps):
        if event["type"] == "token":
            run.append(event["seq"])
            continue
        fold()
        at = f"+{stamp - since:.2f} s"
        if event["type"] == "failover":
            lines.append(f"{at} failover {event.get('kind')} {names.get(event['from'], event['from'])} -> "
                         f"{names.get(event['to'], event['to'])} at {event.get('at_seq')}: {event.get('reason')}")
        elif event["type"] == "done":
            lines.append(f"{at} done {event.get('finish_reason')} executed_on={event.get('executed_on')}")
        else:
            lines.append(f"{at} {event['type']} " + " ".join(
                f"{k}={event[k]}" for k in ("origin", "code", "message") if k in event))
    fold()
    if record.gave_up:
        lines.append(f"gave up: {record.gave_up}")
    return lines


def summarize(records: Sequence[TaskRecord], calm_end: float, names: dict[str, str] | None = None
              ) -> dict[str, Any]:
    """The tasks' figures: outcomes, token invariants, failovers by kind, latency of the calm phase (tasks that
    ended before the first fault) against the faults' (tasks submitted after it), and the first violations
    with their trace (`names`: endpoint -> node name)."""
    verdicts = [(r, check_task(r)) for r in records]
    outcomes = Counter(v.outcome for _, v in verdicts)
    failovers = Counter(e.get("kind", "executor") for r in records for e in r.events if e["type"] == "failover")
    calm = _latency([(r, v) for r, v in verdicts if r.ended is not None and r.ended <= calm_end])
    faults = _latency([(r, v) for r, v in verdicts if r.submitted >= calm_end])
    ratios = {key: round(faults[key] / calm[key], 3) if faults[key] and calm[key] else None
              for key in ("p50_s", "p99_s")}
    failures: dict[str, str] = {}
    for record, verdict in verdicts:
        if verdict.outcome != "done" and verdict.outcome not in failures:
            final = record.events[-1] if record.events and record.events[-1]["type"] == "error" else {}
            failures[verdict.outcome] = str(final.get("message") or record.gave_up)[:300]
    violations = [{"task_id": r.task_id, "node": r.node, "max_tokens": r.max_tokens, "lost": v.lost,
                   "duplicated": v.duplicated, "reordered": v.reordered, "mismatched": v.mismatched,
                   "endings": v.endings, "trace": trace(r, calm_end, names or {})}
                  for r, v in verdicts if v.violated]
    return {
        "tasks": {"submitted": len(records), "done": outcomes.pop("done", 0),
                  "failed": sum(outcomes.values()), "failed_by_reason": dict(outcomes.most_common()),
                  "failure_samples": failures},
        "tokens": {"received": sum(1 for r in records for e in r.events if e["type"] == "token"),
                   "lost": sum(v.lost for _, v in verdicts), "duplicated": sum(v.duplicated for _, v in verdicts),
                   "reordered": sum(v.reordered for _, v in verdicts),
                   "mismatched_tasks": sum(1 for _, v in verdicts if v.mismatched)},
        "endings": {"exactly_once": sum(1 for _, v in verdicts if v.ended_once),
                    "none": sum(1 for _, v in verdicts if not v.endings and not v.ended_once),
                    "several": sum(1 for _, v in verdicts if v.endings > 1)},
        "failovers": {"origin": failovers.get("origin", 0), "executor": failovers.get("executor", 0)},
        "latency": {"calm": calm, "faults": faults, "ratio_p50": ratios["p50_s"], "ratio_p99": ratios["p99_s"]},
        "violations": len(violations),
        "violation_samples": violations[:10],
    }


# -- the daemons (I/O) ----------------------------------------------------------------------------------

class NodeProcess:
    """One node of the mesh across its lives: the same name, port and data dir at every (re)start."""

    def __init__(self, name: str, port: int, argv: list[str], env: dict[str, str]) -> None:
        self.name, self.port, self.argv, self.env = name, port, argv, env
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.proc: subprocess.Popen[str] | None = None
        self.ready = threading.Event()
        self.ended = threading.Event()
        self.stopped = False
        self.starts = 0
        self.tail: deque[str] = deque(maxlen=3)
        self.errors: list[str] = []
        self.wake: Callable[[], None] = lambda: None
        """Set by whoever waits for this node to start (called from its log's reader thread)."""

    def spawn(self) -> None:
        self.ready, self.ended, self.stopped = threading.Event(), threading.Event(), False
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=self.env)
        self.starts += 1
        threading.Thread(target=self._read_log, args=(self.proc, self.ready, self.ended), daemon=True).start()

    def _read_log(self, proc: subprocess.Popen[str], ready: threading.Event, ended: threading.Event) -> None:
        """Drain its log (a full pipe would freeze it), note its ready line and error lines."""
        assert proc.stderr is not None
        with contextlib.suppress(ValueError, OSError):  # the pipe closed under us: it is being stopped
            for line in proc.stderr:
                line = line.strip()
                self.tail.append(line)
                if '"event": "ready"' in line:
                    ready.set()
                    self.wake()
                elif '"level": "error"' in line or '"level": "critical"' in line or "Traceback" in line:
                    self.errors.append(line[:300])
        ended.set()
        self.wake()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def serving(self) -> bool:
        return self.running and self.ready.is_set() and not self.stopped

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)

    def rss_kb(self) -> int | None:
        """VmRSS from /proc (None when it is not running)."""
        if not self.running:
            return None
        assert self.proc is not None
        with contextlib.suppress(OSError), open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    async def started(self, timeout: float = READY_TIMEOUT_S) -> bool:
        """Wait (bounded) until this life says ready or ends; whether it is ready."""
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(woken.set)

        self.wake = wake
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not (self.ready.is_set() or self.ended.is_set()):
                    await woken.wait()
                    woken.clear()
        return self.ready.is_set() and not self.ended.is_set()


def free_ports(count: int) -> list[int]:
    """Ports the OS says are free, all held at once so they differ."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class ChaosMesh:
    """The N daemons, each knowing every other as a seed (a restarted one finds them again, and they it)."""

    def __init__(self, settings: ChaosSettings, home: str) -> None:
        self.home = home
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQLLM_")}
        env.update(ZMQLLM_HOME=home, PYTHONUNBUFFERED="1")
        names = [f"n{i}" for i in range(settings.nodes)]
        ports = dict(zip(names, free_ports(settings.nodes)))
        self.nodes: dict[str, NodeProcess] = {}
        for name in names:
            seeds = [arg for other in names if other != name for arg in ("--peer", f"tcp://127.0.0.1:{ports[other]}")]
            argv = [sys.executable, "-P", "-m", "zmqllm", "daemon", "--name", name,
                    "--bind", f"tcp://127.0.0.1:{ports[name]}", "--engine", "echo",
                    "--echo-rate", f"{settings.echo_rate:g}", "--heartbeat-interval", f"{settings.heartbeat_s:g}",
                    "--json", "--log-level", "warning", *seeds]
            self.nodes[name] = NodeProcess(name, ports[name], argv, env)
        self.procs: list[subprocess.Popen[str]] = []
        """Every process started, each life of each node."""

    def spawn(self, node: NodeProcess) -> None:
        node.spawn()
        assert node.proc is not None
        self.procs.append(node.proc)

    def serving(self) -> list[NodeProcess]:
        return [node for node in self.nodes.values() if node.serving]

    def stop_all(self) -> None:
        """SIGCONT and SIGTERM every daemon, then reap each (SIGKILL past STOP_TIMEOUT_S)."""
        for node in self.nodes.values():
            node.signal(signal.SIGCONT)
            node.signal(signal.SIGTERM)
        for node in self.nodes.values():
            if node.proc is None:
                continue
            try:
                node.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                node.kill()
            if node.proc.stderr is not None:
                node.proc.stderr.close()

    def leaked(self) -> list[int]:
        """Pids of any process still running with this mesh's ZMQLLM_HOME (a daemon, or anything it left)."""
        mark = f"ZMQLLM_HOME={self.home}\0".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/environ", "rb") as environ:
                    if mark in environ.read():
                        found.append(int(entry))
        return found


async def wait_for_mesh(mesh: ChaosMesh) -> None:
    """Until every node sees every other alive (bounded); RuntimeError naming who does not."""
    names = set(mesh.nodes)
    deadline = time.monotonic() + READY_TIMEOUT_S
    for node in mesh.nodes.values():
        async with AsyncClient(node.endpoint, timeout=5) as client:
            while True:
                alive = {row["name"] for row in await client.peers() if row["state"] == "alive"}
                if alive >= names:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {node.name} sees only {sorted(alive)} alive after "
                                       f"{READY_TIMEOUT_S:g} s")
                await asyncio.sleep(0.1)


# -- clients and faults (I/O) ------------------------------------------------------------------------------

async def run_task(record: TaskRecord, endpoint: str, others: Sequence[str], timeout: float) -> None:
    """Submit one task and keep every event it yields. The client is told the mesh's other endpoints (serving
    ones first), as a program given the mesh's seeds would know them: it learns the live ones from its node
    too, but a node lost in the first instant, or every node it learnt lost, would leave it nowhere to go."""
    try:
        async with AsyncClient(endpoint, timeout=timeout) as client, asyncio.timeout(TASK_BOUND_S):
            client.endpoints = list(dict.fromkeys([endpoint, *others]))
            async for event in client.submit(record.prompt, max_tokens=record.max_tokens, task_id=record.task_id):
                record.events.append(event)
                record.stamps.append(time.monotonic())
    except MeshUnreachable as exc:
        record.gave_up = f"unreachable: {exc}"
    except TimeoutError:
        record.gave_up = "hung"
    except Exception as exc:  # anything else is a client that broke: recorded, judged a violation
        record.gave_up = f"client error: {type(exc).__name__}: {exc}"
    record.ended = time.monotonic()


async def client_loop(mesh: ChaosMesh, settings: ChaosSettings, rng: random.Random, records: list[TaskRecord],
                      ending: asyncio.Event) -> None:
    """Submit tasks one after another to a random serving node until `ending`."""
    while not ending.is_set():
        serving = mesh.serving() or list(mesh.nodes.values())
        node = rng.choice(serving)
        prompt = " ".join(rng.sample(WORDS, rng.randint(2, 6)))
        record = TaskRecord(uuid.uuid4().hex, prompt, rng.randint(*settings.tokens), node.name, time.monotonic())
        records.append(record)
        others = [n.endpoint for n in serving] + [n.endpoint for n in mesh.nodes.values() if n not in serving]
        await run_task(record, node.endpoint, others, settings.client_timeout_s)


@dataclass
class FaultLog:
    """What was done to the mesh: one timeline row per fault of the schedule, and what became of it."""

    started: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, fault: Fault, outcome: str) -> dict[str, Any]:
        row = {"at_s": round(time.monotonic() - self.started, 2), "fault": fault.kind, "node": fault.node,
               "outcome": outcome}
        if fault.kind == "stop":
            row["hold_s"] = fault.hold_s
        self.rows.append(row)
        return row


def _refusal(fault: Fault, node: NodeProcess, serving: int) -> str | None:
    """Why the mesh as it really is cannot take `fault` now (a restart slower than planned), or None."""
    if fault.kind == "restart":
        return "skipped: it is running" if node.running else None
    if not node.running or node.stopped:
        return f"skipped: it is {'stopped' if node.stopped else 'not running'}"
    if node.serving and serving - 1 < MIN_SERVING:
        return f"skipped: would leave fewer than {MIN_SERVING} nodes serving"
    if fault.kind == "stop" and not node.ready.is_set():
        return "skipped: still starting"
    return None


async def inject(plan: Sequence[Fault], mesh: ChaosMesh, log: FaultLog, until: float, progress: Progress) -> None:
    """Apply the schedule on time until `until` (monotonic s), and see the last restarts say ready. Nodes still
    stopped then are continued, however it ends."""
    loop = asyncio.get_running_loop()
    continues: list[asyncio.TimerHandle] = []
    restarts: set[asyncio.Task[None]] = set()

    def cont(node: NodeProcess) -> None:
        node.signal(signal.SIGCONT)
        node.stopped = False

    async def restarted(node: NodeProcess, row: dict[str, Any]) -> None:
        began = time.monotonic()
        ready = await node.started()
        row["outcome"] = (f"ready in {time.monotonic() - began:.2f} s" if ready else
                          f"did not come back: {' | '.join(node.tail) or 'no output'}")

    try:
        for fault in plan:
            await asyncio.sleep(max(0.0, log.started + fault.at_s - time.monotonic()))
            node = mesh.nodes[fault.node]
            why = _refusal(fault, node, len(mesh.serving()))
            row = log.add(fault, why or "done")
            progress(f"faults +{row['at_s']:.2f} s: {fault.kind} {fault.node}"
                     + (f" for {fault.hold_s:g} s" if fault.kind == "stop" else "") + (f": {why}" if why else ""))
            if why:
                continue
            if fault.kind == "kill":
                node.kill()
            elif fault.kind == "stop":
                node.signal(signal.SIGSTOP)
                node.stopped = True
                continues.append(loop.call_later(fault.hold_s, cont, node))
            else:
                mesh.spawn(node)
                task = loop.create_task(restarted(node, row))
                restarts.add(task)
                task.add_done_callback(restarts.discard)
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        await asyncio.gather(*restarts)  # each bounded by READY_TIMEOUT_S
    finally:
        for handle in continues:
            handle.cancel()
        for node in mesh.nodes.values():
            if node.stopped:
                cont(node)
        for task in restarts:
            task.cancel()


async def report_progress(records: list[TaskRecord], mesh: ChaosMesh, started: float, progress: Progress) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        ended = [check_task(r).outcome for r in records if r.ended is not None]
        progress(f"t={time.monotonic() - started:.1f} s: tasks {len(records)}, done {ended.count('done')}, "
                 f"failed {len(ended) - ended.count('done')}; serving "
                 f"{','.join(n.name for n in mesh.serving())}")


@dataclass
class Outcome:
    records: list[TaskRecord]
    calm_end: float
    timeline: list[dict[str, Any]]
    planned: int
    rss_kb: dict[str, dict[str, int | None]]
    names: dict[str, str]
    runs: dict[str, Any] = field(default_factory=dict)


async def drive(mesh: ChaosMesh, settings: ChaosSettings, progress: Progress) -> Outcome:
    """Start the mesh, run the calm phase then the faults under the clients' load, and let the last tasks
    end (each within TASK_BOUND_S)."""
    for node in mesh.nodes.values():
        mesh.spawn(node)
    for node in mesh.nodes.values():
        if not await node.started():
            raise RuntimeError(f"daemon {node.name} did not start: {' | '.join(node.tail) or 'no output'}")
    await wait_for_mesh(mesh)
    plan = plan_faults(list(mesh.nodes), settings.duration_s, settings.fault_every, settings.stop_for, settings.seed)
    progress(f"{settings.nodes} nodes up; {settings.calm_s:g} s without faults, then {len(plan)} faults in "
             f"{settings.duration_s:g} s (seed {settings.seed})")
    records: list[TaskRecord] = []
    ending = asyncio.Event()
    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        clients = [group.create_task(client_loop(mesh, settings, random.Random(f"{settings.seed}/{i}"), records,
                                                 ending)) for i in range(settings.clients)]
        run_records: list[chaos_runs.RunRecord] = []
        runners = [group.create_task(chaos_runs.run_client_loop(
            mesh.serving, settings.client_timeout_s, TASK_BOUND_S, random.Random(f"{settings.seed}/run{i}"),
            run_records, ending, WORDS)) for i in range(settings.run_clients)]
        reporter = group.create_task(report_progress(records, mesh, started, progress))
        await asyncio.sleep(settings.calm_s)
        calm_end = time.monotonic()
        rss_start = {name: node.rss_kb() for name, node in mesh.nodes.items()}
        log = FaultLog(calm_end)
        await inject(plan, mesh, log, calm_end + settings.duration_s, progress)
        ending.set()
        progress("faults over: waiting for the last tasks to end")
        await asyncio.gather(*clients, *runners)
        reporter.cancel()
    up = [node for node in mesh.nodes.values() if node.running and not node.stopped]
    split = chaos_runs.finished_once(await chaos_runs.runs_by_node(up, READY_TIMEOUT_S / 10),
                                     [r.run_id for r in run_records])
    rss = {name: {"start_kb": rss_start[name], "end_kb": node.rss_kb()} for name, node in mesh.nodes.items()
           if node.starts == 1 and node.running}
    return Outcome(records, calm_end, log.rows, len(plan), rss, {n.endpoint: n.name for n in mesh.nodes.values()},
                   chaos_runs.summarize_runs(run_records, split, len(up)))


def run_chaos(settings: ChaosSettings, progress: Progress = lambda line: None) -> dict[str, Any]:
    """The whole benchmark; every daemon is reaped however it ends (Ctrl-C included). RuntimeError, one line,
    when the mesh cannot even start."""
    with tempfile.TemporaryDirectory(prefix="zmqllm-chaos-") as home:
        mesh = ChaosMesh(settings, home)
        try:
            outcome = asyncio.run(drive(mesh, settings, progress))
        finally:
            mesh.stop_all()
        leaked = mesh.leaked()
        errors = {name: node.errors[-3:] for name, node in mesh.nodes.items() if node.errors}
        error_lines = sum(len(node.errors) for node in mesh.nodes.values())
        processes = {"started": len(mesh.procs), "reaped": sum(1 for p in mesh.procs if p.returncode is not None),
                     "leaked": leaked}
    return build_report(settings, outcome, processes, {"lines": error_lines, "last": errors})


def build_report(settings: ChaosSettings, outcome: Outcome, processes: dict[str, Any],
                 daemon_errors: dict[str, Any]) -> dict[str, Any]:
    """The CONTRACT's benchmark document: met when no task broke an invariant and no process was left."""
    figures = summarize(outcome.records, outcome.calm_end, outcome.names)
    done = [row for row in outcome.timeline if not row["outcome"].startswith("skipped")]
    figures["faults"] = {"planned": outcome.planned, "injected": len(done),
                         "skipped": len(outcome.timeline) - len(done),
                         "by_kind": dict(Counter(row["fault"] for row in done))}
    figures["processes"] = processes
    figures["rss_kb"] = {name: {**kb, "growth_kb": kb["end_kb"] - kb["start_kb"]}
                         for name, kb in outcome.rss_kb.items() if kb["start_kb"] and kb["end_kb"]}
    figures["daemon_errors"] = daemon_errors
    figures["partition"] = "not run"
    figures["runs"] = outcome.runs
    figures["timeline"] = outcome.timeline
    met = figures["violations"] == 0 and not processes["leaked"] and not outcome.runs.get("violations")
    report = {"bench": "chaos", "name": "chaos", "settings": settings.as_json(), "figures": figures,
              "ratio": figures["latency"]["ratio_p50"], "goal": {"violations": 0, "leaked_processes": 0},
              "met": met}
    report["summary"] = summary(report)
    return report


def summary(report: dict[str, Any]) -> str:
    s, f = report["settings"], report["figures"]
    tasks, tokens, lat = f["tasks"], f["tokens"], f["latency"]
    reasons = ", ".join(f"{why} {n}" for why, n in tasks["failed_by_reason"].items())
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(f["faults"]["by_kind"].items()))

    def span(part: dict[str, Any]) -> str:
        return f"p50 {part['p50_s']} s, p99 {part['p99_s']} s ({part['tasks']} tasks)"

    lines = [
        f"chaos: {s['nodes']} echo nodes, {s['clients']} clients, {s['duration_s']:g} s of faults every "
        f"{s['fault_every_s'][0]:g}-{s['fault_every_s'][1]:g} s after {s['calm_s']:g} s without (seed {s['seed']}, "
        f"heartbeat {s['heartbeat_interval_s']:g} s)",
        f"  tasks: {tasks['submitted']} submitted, {tasks['done']} done, {tasks['failed']} failed"
        + (f" ({reasons})" if reasons else ""),
        f"  faults: {f['faults']['injected']} injected ({kinds}), {f['faults']['skipped']} skipped; "
        f"partition: {f['partition']}",
        f"  workflow runs: {f['runs'].get('submitted', 0)} submitted, {f['runs'].get('done', 0)} done, "
        f"{f['runs'].get('failed', 0)} failed {f['runs'].get('failed_by_reason') or ''}; client moves "
        f"{f['runs'].get('client_moves', 0)}, adoptions seen {f['runs'].get('adoptions_seen', 0)}; violations "
        f"{f['runs'].get('violations', 0)} (finished by several nodes: {f['runs'].get('finished_by_several_nodes')})",
        f"  failovers: origin {f['failovers']['origin']}, executor {f['failovers']['executor']}",
        f"  invariants: lost {tokens['lost']}, duplicated {tokens['duplicated']}, reordered {tokens['reordered']}, "
        f"mismatched tasks {tokens['mismatched_tasks']} (of {tokens['received']} tokens); ended exactly once "
        f"{f['endings']['exactly_once']}/{tasks['submitted']}; processes leaked {len(f['processes']['leaked'])} "
        f"of {f['processes']['started']}: {'met' if report['met'] else 'NOT met'} (goal: no violation, no leak)",
        f"  latency, calm: {span(lat['calm'])}; under faults: {span(lat['faults'])}",
        f"  ratio faults/calm (baseline: the calm phase, same load): p50 {lat['ratio_p50']}, p99 {lat['ratio_p99']}",
        "  daemon RSS, nodes never restarted: " + (", ".join(
            f"{name} {kb['start_kb'] / 1024:.1f} -> {kb['end_kb'] / 1024:.1f} MiB" for name, kb in f["rss_kb"].items())
            or "none (every node was restarted)"),
        f"  daemon error lines: {f['daemon_errors']['lines']}",
    ]
    lines += [f"  failed ({why}), e.g.: {text}" for why, text in tasks["failure_samples"].items()]
    lines += [f"  run violation: {v['run_id']}: {v['why']}" for v in f["runs"].get("violation_samples", [])]
    for v in f["violation_samples"]:
        broken = ", ".join(f"{key} {v[key]}" for key in ("lost", "duplicated", "reordered", "mismatched", "endings")
                           if v[key] and (key != "endings" or v[key] != 1))
        lines.append(f"  violation: task {v['task_id']} (to {v['node']}, {v['max_tokens']} tokens): "
                     f"{broken or 'no single ending'}")
        lines += [f"      {step}" for step in v["trace"]]
    lines.append("  timeline:")
    lines += [f"    {row['at_s']:7.2f} s  {row['fault']:<7} {row['node']}"
              + (f" {row['hold_s']:g} s" if "hold_s" in row else "") + f"  {row['outcome']}" for row in f["timeline"]]
    return "\n".join(lines)
