"""Saying a repeated problem once, then at most once per interval with a count. Pure: a clock is passed in.

A peer or a stranger can make a node hit the same problem thousands of times a second (garbage frames,
refused handshakes, forbidden messages): a log line for each would fill the disk. `Quiet.note` says whether
to log now and how many occurrences the line stands for.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_INTERVAL_S = 60.0
MAX_KEYS = 1024
"""Distinct senders remembered; the longest unheard is forgotten first, so memory stays bounded."""


@dataclass
class _Said:
    at: float
    unsaid: int = 0


class Quiet:
    """Per-key rate limit for log lines: the first occurrence at once, then one line per `interval_s`."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, max_keys: int = MAX_KEYS) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._said: OrderedDict[object, _Said] = OrderedDict()

    def note(self, key: object, now: float) -> int:
        """Record one occurrence; returns how many occurrences a line logged now should report (0: stay quiet)."""
        said = self._said.get(key)
        if said is None:
            self._said[key] = _Said(now)
            if len(self._said) > self.max_keys:
                self._said.popitem(last=False)
            return 1
        self._said.move_to_end(key)
        said.unsaid += 1
        if now - said.at < self.interval_s:
            return 0
        count, said.unsaid, said.at = said.unsaid, 0, now
        return count
