"""The partial view's overlay: live members ordered on a few rings by a per-ring hash of their ids.

Above `SwimConfig.view_threshold` live members, a node links to its predecessor and successor on each ring (at
most 2 × rings links). Every node computes the same hashes, so the relation is symmetric (my successor has me as
its predecessor) whenever tables agree; each ring alone connects everyone, the union of random rings is an
expander (diameter O(log N)), and a join or a death changes two links per ring.
"""

from __future__ import annotations

import functools
import hashlib
import random
from bisect import bisect_left


class ViewRings:
    """The live members (this node included) ordered on `count` rings by a per-ring hash of their ids: the
    partial view's overlay, and a uniform random pick of a live member (ring 0 is in hash order). Each ring is
    two parallel lists, keys and nodes, so bisecting compares plain integers."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._keys: list[list[int]] = [[] for _ in range(count)]
        self._nodes: list[list[str]] = [[] for _ in range(count)]

    def __len__(self) -> int:
        return len(self._nodes[0])

    def add(self, node: str) -> None:
        for keys, nodes, key in zip(self._keys, self._nodes, ring_keys(node, self._count)):
            at = bisect_left(keys, key)
            keys.insert(at, key)
            nodes.insert(at, node)

    def remove(self, node: str) -> None:
        for keys, nodes, key in zip(self._keys, self._nodes, ring_keys(node, self._count)):
            at = bisect_left(keys, key)
            del keys[at], nodes[at]

    def rebuild(self, members: list[str]) -> None:
        for ring in range(self._count):
            placed = sorted((ring_keys(node, self._count)[ring], node) for node in members)
            self._keys[ring] = [key for key, _ in placed]
            self._nodes[ring] = [node for _, node in placed]

    def neighbours(self, node: str) -> list[str]:
        """Predecessor and successor of `node` on every ring, each once."""
        found: dict[str, None] = {}
        for keys, nodes, key in zip(self._keys, self._nodes, ring_keys(node, self._count)):
            at = bisect_left(keys, key)
            for neighbour in (nodes[at - 1], nodes[(at + 1) % len(nodes)]):
                if neighbour != node:
                    found[neighbour] = None
        return list(found)

    def pick(self, rng: random.Random) -> str:
        return rng.choice(self._nodes[0])

    def nodes(self) -> list[str]:
        return list(self._nodes[0])


@functools.lru_cache(maxsize=1 << 16)
def ring_keys(node: str, count: int) -> tuple[int, ...]:
    """A node's place on each ring: a hash of its id, the same on every node (so views are symmetric)."""
    return tuple(int.from_bytes(hashlib.blake2b(f"{ring}/{node}".encode(), digest_size=8).digest(), "big")
                 for ring in range(count))
