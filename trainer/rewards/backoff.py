"""Wait times between retries of a reward request: capped exponential backoff with jitter, and Retry-After.

Attempt k (0-based) waits min(max_backoff, initial * multiplier**k) scaled by a uniform factor in [1 - jitter, 1]
("equal jitter" family: spreads out clients that failed together without ever waiting longer than the cap). A
429/503 reply's `Retry-After` (seconds, or an HTTP date) is a lower bound on the wait.
"""
from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

from trainer.rewards.spec import RetryPolicy


def backoff_s(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number `attempt` (0 = the first attempt failed)."""
    base = min(policy.max_backoff_s, policy.initial_backoff_s * policy.multiplier ** attempt)
    return base * (1.0 - policy.jitter * rng.random())


def retry_after_s(header: str | None) -> float | None:
    """The wait a Retry-After header asks for, in seconds (>= 0), or None when absent or unreadable."""
    if not header:
        return None
    header = header.strip()
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(header).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
