"""Updates waiting to ride on outgoing messages, each sent a bounded number of times (λ · log N)."""

from __future__ import annotations

from zmqllm.core.swim_wire import Update


class RumorQueue:
    """memberlist's transmit-limited queue: each update is sent at most `limit` times, the least-sent first and,
    among equals, the newest first (a fresh refutation or accusation beats old news for the last slots of a
    message); a newer update about a node replaces the older one. Bucket `i` holds the updates sent `i` times,
    in the order they were added. Size: one entry per node at most."""

    def __init__(self) -> None:
        self._sent: dict[str, int] = {}
        self._buckets: list[dict[str, Update]] = [{}]

    def __len__(self) -> int:
        return len(self._sent)

    def add(self, update: Update) -> None:
        sent = self._sent.pop(update.node, None)
        if sent is not None:
            del self._buckets[sent][update.node]
        self._buckets[0][update.node] = update
        self._sent[update.node] = 0

    def take(self, count: int, limit: int) -> list[Update]:
        """Up to `count` updates for one message, each counted as sent once more; one sent `limit` times is
        dropped. `limit` may shrink between calls (the mesh shrank): updates past it are dropped then."""
        buckets, sent = self._buckets, self._sent
        limit = max(limit, 1)
        for bucket in buckets[limit:]:
            for node in bucket:
                del sent[node]
        del buckets[limit:]
        picked: list[tuple[int, Update]] = []
        for times, bucket in enumerate(buckets):
            for update in reversed(bucket.values()):
                if len(picked) == count:
                    break
                picked.append((times, update))
        for times, update in picked:  # moved only now, so no update is taken twice
            del buckets[times][update.node]
            after = times + 1
            if after < limit:
                if after == len(buckets):
                    buckets.append({})
                buckets[after][update.node] = update
                sent[update.node] = after
            else:
                del sent[update.node]
        return [update for _, update in picked]
