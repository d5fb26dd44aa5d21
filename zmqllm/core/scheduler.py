"""Where a task runs. Pure: fed peer states, returns a decision.

The origin picks, among live nodes serving the model, the one with the least
outstanding work per slot. Outstanding work is what this origin knows exactly
(its own tasks there now, ended ones already gone) plus other origins' work as
the node's last heartbeat reported it (the report less what of it was this
origin's own when it came). So a burst of submissions spreads at once instead of
piling on whoever looked idle half a second ago, and a slot freed since the last
heartbeat is seen as free at once instead of looking busy until the next one
(which left slots idle while tasks queued elsewhere under a saturating load).
Ties go to this node (no network hop), then by name.

A node serving several models loads each on first use: one that must load the model first counts
`COLD_LOAD_COST` more (a cost, not a refusal: an idle cold node still beats a busy warm one).

The default policy, `cache-aware`, also counts what a node would not compute again: a request's prompt shares
its leading blocks with prompts the node's cache holds (`zmqllm.core.prefix`), and the node's cost drops by
`CACHE_WEIGHT` times the share of the prompt it holds. So a conversation's next turn goes back to the node that
holds its history, unless that node has a full slot's worth more work per slot than another (then the wait
would cost more than the prefill saved). It also counts speed: a node measured `SPEED_TOLERANCE` (2) or more times slower
than the fastest able one (heartbeats carry each node's decode tokens/s per request) counts its outstanding work
and the new task's that many times over, so the task waits where it will finish first: an idle node 4× slower
takes work only once the fast ones have three tasks per slot queued. With no cache to match and no speed
difference it is exactly `least-loaded`, the rule above. The others exist to be compared with it (`zmqllm bench
routing`) and for operators who want them: `power-of-two` (Ray Serve's default: two able nodes drawn at random,
the one with less outstanding work per slot), `round-robin` and `random`. A pinned peer and the nodes excluded
(tried already, or to avoid) are the same for every policy: a policy only picks among the able nodes.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from zmqllm.core.prefix import reuse

CACHE_AWARE = "cache-aware"
LEAST_LOADED = "least-loaded"
POWER_OF_TWO = "power-of-two"
ROUND_ROBIN = "round-robin"
RANDOM = "random"
ROUTING_POLICIES = (CACHE_AWARE, LEAST_LOADED, POWER_OF_TWO, ROUND_ROBIN, RANDOM)
SPEED_TOLERANCE = 2.0
"""How many times slower than the fastest able node a node must be before cache-aware routing counts it: nearer
speeds are noise (equal machines measure up to 1.5x apart while they share cores with each other, as three
nodes on two cores do), and equal machines must keep splitting work by load and cache alone."""
COLD_LOAD_COST = 1.0
"""What loading the model first adds to a node's cost, in outstanding tasks per slot."""
CACHE_WEIGHT = 1.0
"""What holding a whole prompt in cache takes off a node's cost, in outstanding tasks per slot."""


@dataclass(frozen=True)
class Candidate:
    """A node as the scheduler sees it."""

    name: str
    models: tuple[str, ...]
    state: str
    slots: int
    reported_work: int
    assigned_by_me: int
    is_self: bool = False
    reported_mine: int | None = None
    """How much of `reported_work` was this origin's own when it was reported; None when unknown (then the
    larger of the report and `assigned_by_me` is the best estimate)."""
    loaded: tuple[str, ...] | None = None
    """Of `models`, those loaded now; None: all."""
    cache: Mapping[str, frozenset[int]] = field(default_factory=dict, compare=False)
    """Per model, the prompt block hashes its caches hold."""
    speed: float = 0.0
    """Decode tokens/s of one request there (0: not known yet)."""

    @property
    def outstanding(self) -> int:
        if self.reported_mine is None:
            return max(self.reported_work, self.assigned_by_me)
        return self.assigned_by_me + max(0, self.reported_work - self.reported_mine)


@dataclass(frozen=True)
class NoRoute(Exception):
    """No node can take the task; `code` is the protocol error code."""

    code: str
    message: str

    def __str__(self) -> str:
        return self.message


def resolve_model(candidates: Sequence[Candidate], model: str | None) -> str:
    """The model a task asks for: the one named, or the only one the mesh serves."""
    served = sorted({m for c in candidates if c.state in ("alive", "suspect") for m in c.models})
    if model is not None:
        return model
    if len(served) == 1:
        return served[0]
    if not served:
        raise NoRoute("no_peer_for_model", "no live node serves any model")
    raise NoRoute("bad_request", f"the mesh serves several models ({', '.join(served)}): name one with --model")


class Router:
    """A routing policy with the little state it keeps between placements: the random source (injected, so a
    seeded one replays the same choices) and the round-robin cursor. Pure: it never reads a clock or a socket.
    Raises ValueError for a policy not in `ROUTING_POLICIES`."""

    def __init__(self, policy: str = LEAST_LOADED, rng: random.Random | None = None) -> None:
        if policy not in ROUTING_POLICIES:
            raise ValueError(f"unknown routing policy {policy!r} (one of {', '.join(ROUTING_POLICIES)})")
        self.policy = policy
        self.rng = rng if rng is not None else random.Random()
        self.last_name: str | None = None
        """The node round-robin picked last: the next pick is the first able node named after it."""

    def pick(self, able: Sequence[Candidate], model: str = "", prefix: Sequence[int] = ()) -> Candidate:
        """One of `able` (not empty) for a request of `model` whose prompt's block hashes are `prefix`, by this
        router's policy."""
        if self.policy == CACHE_AWARE:
            fastest = max(c.speed for c in able)
            return min(able, key=lambda c: _cost(c, model, prefix, fastest))
        if self.policy == LEAST_LOADED:
            return min(able, key=lambda c: _cost(c, model))
        ordered = sorted(able, key=lambda c: c.name)  # a fixed order, whatever order the table listed them in
        if self.policy == RANDOM:
            return self.rng.choice(ordered)
        if self.policy == POWER_OF_TWO:
            return min(self.rng.sample(ordered, min(2, len(ordered))), key=lambda c: _cost(c, model))
        chosen = next((c for c in ordered if self.last_name is not None and c.name > self.last_name), ordered[0])
        self.last_name = chosen.name
        return chosen


def _cost(c: Candidate, model: str, prefix: Sequence[int] = (), fastest: float = 0.0
          ) -> tuple[float, bool, bool, bool, str]:
    """Least outstanding work per slot first (a cold load counted, the cache held taken off; with `fastest`, a
    node k times slower than it counts its work and the task's own k times); then loaded before cold, alive
    before suspect, this node, then by name."""
    cost = c.outstanding / max(1, c.slots)
    slowness = fastest / c.speed if c.speed > 0 and fastest > 0 else 1.0
    if slowness >= SPEED_TOLERANCE:
        cost = (cost + 1) * slowness - 1
    cold = c.loaded is not None and model not in c.loaded
    if cold:
        cost += COLD_LOAD_COST
    if prefix:
        cost -= CACHE_WEIGHT * reuse(prefix, c.cache.get(model))
    return cost, cold, c.state != "alive", not c.is_self, c.name


_DEFAULT_ROUTER = Router(CACHE_AWARE)
"""The default router: cache-aware keeps no state, so one serves every caller."""


def choose_executor(
    candidates: Sequence[Candidate],
    model: str | None,
    pinned: str | None = None,
    exclude: Collection[str] = (),
    router: Router | None = None,
    prefix: Sequence[int] = (),
) -> tuple[Candidate, str]:
    """Pick the node to run a task and the model name it resolves to; `router` picks among the able nodes
    (default: a `cache-aware` one), `prefix` being the prompt's block hashes (`zmqllm.core.prefix`).

    Raises `NoRoute` with `peer_unknown`, `peer_dead`, `no_peer_for_model` or
    `bad_request` (several models, none named)."""
    if pinned is not None:
        target = next((c for c in candidates if c.name == pinned), None)
        if target is None:
            raise NoRoute("peer_unknown", f"no node named {pinned!r} in the mesh")
        if target.state not in ("alive", "suspect"):
            raise NoRoute("peer_dead", f"node {pinned!r} is {target.state}")
        chosen_model = model if model is not None else _only_model(target)
        if chosen_model not in target.models:
            raise NoRoute(
                "no_peer_for_model", f"node {pinned!r} does not serve {chosen_model!r} (it serves {_names(target.models)})"
            )
        return target, chosen_model
    chosen_model = resolve_model(candidates, model)
    able = [
        c
        for c in candidates
        if c.state in ("alive", "suspect") and chosen_model in c.models and c.name not in exclude
    ]
    if not able:
        served = sorted({m for c in candidates if c.state in ("alive", "suspect") for m in c.models})
        raise NoRoute(
            "no_peer_for_model", f"no live node serves model {chosen_model!r} (the mesh serves {_names(served)})"
        )
    return (router or _DEFAULT_ROUTER).pick(able, chosen_model, prefix), chosen_model


def _only_model(target: Candidate) -> str:
    if len(target.models) == 1:
        return target.models[0]
    raise NoRoute("bad_request", f"node {target.name!r} serves several models ({_names(target.models)}): name one")


def _names(models: Collection[str]) -> str:
    return ", ".join(models) if models else "nothing"
