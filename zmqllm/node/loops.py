"""The daemon's periodic work (heartbeats, liveness, trace flushes, journal checkpoints), each guarded.

An exception in a bare `while True` loop ends its asyncio task silently: one journal error would stop
dead-peer detection or checkpointing for good while the daemon looks healthy. A guarded loop logs a failing
round (the first with its traceback, then one line per `REPEAT_LOG_S` with a count) and runs the next one; a
loop that has failed without a break for `GIVE_UP_S` cannot go on, and `give_up` stops the daemon with a
clear error rather than leave a zombie.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

GIVE_UP_S = 30.0
"""A loop failing every round for this long stops the daemon."""
REPEAT_LOG_S = 10.0
"""While a loop keeps failing, one log line per this many seconds (with the count)."""

Round = Callable[[], float]
"""One round of a loop's work; returns the seconds to wait before the next round."""


async def guarded(name: str, round_: Round, give_up: Callable[[str], None], clock: Callable[[], float],
                  retry_s: float) -> None:
    """Run `round_` for ever; a failing round is logged and retried after `retry_s`."""
    failing_since: float | None = None
    failures = 0
    said_at = float("-inf")
    while True:
        try:
            delay = round_()
        except Exception as exc:
            now = clock()
            failures += 1
            if failing_since is None:
                failing_since = now
                log.exception("the %s loop failed; it goes on", name)
                said_at = now
            elif now - said_at >= REPEAT_LOG_S:
                log.error("the %s loop failed %d times in %.0f s: %s: %s", name, failures, now - failing_since,
                          type(exc).__name__, exc)
                said_at = now
            if now - failing_since >= GIVE_UP_S:
                give_up(f"the {name} loop failed without a break for {now - failing_since:.0f} s "
                        f"({failures} times; last: {type(exc).__name__}: {exc}): stopping")
                return
            delay = retry_s
        else:
            if failing_since is not None:
                log.info("the %s loop works again after %d failure(s)", name, failures)
            failing_since, failures = None, 0
        await asyncio.sleep(delay)
