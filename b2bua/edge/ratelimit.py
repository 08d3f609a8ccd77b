"""Turn the per-worker setup rate into the edge's counting windows.

The edge counts new calls per worker in htable keys named by a window of
whole seconds. A rate that is not a whole number per second cannot be
counted in one-second windows, so the window grows until it admits at
least one call, and the limit is rounded down to stay under the rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Longest window used; rates below one call per this many seconds are
# rounded up to one call per window.
MAX_WINDOW_S = 60


@dataclass(frozen=True)
class SetupWindow:
    """A counting window: at most `limit` new calls per `seconds`."""

    seconds: int
    limit: int

    def key(self, worker_id: str, now: float) -> str:
        """Return the htable key counting worker_id's setups at time now."""
        return f"{worker_id}:{int(now) // self.seconds}"


def setup_window(rate: float) -> SetupWindow:
    """Return the shortest window of whole seconds that admits a call.

    Raises ValueError for a rate that is not a positive number.
    """
    if not rate > 0 or math.isinf(rate):
        raise ValueError(f"invalid setup rate {rate!r}; allowed: a number > 0")
    for seconds in range(1, MAX_WINDOW_S + 1):
        # The small epsilon keeps 0.1 * 10 from rounding down to 0.
        limit = math.floor(rate * seconds + 1e-9)
        if limit >= 1:
            return SetupWindow(seconds, limit)
    return SetupWindow(MAX_WINDOW_S, 1)
