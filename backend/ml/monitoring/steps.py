"""What a check tells whoever watches it (`CheckStep`, one per model checked, retrain
attempt and second of backoff), and the clock it reads and waits on (`WallClock`)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class CheckStep:
    """One step of a check, for whoever watches it.

    kind "checked": `model` was checked (`done` of `total`), with its `verdict`;
    "retraining": retrain `attempt` of `attempts` of `model` begins (`strategy`);
    "waiting": `seconds_left` of the backoff before that attempt (one step a second).
    """

    kind: str
    model: str
    done: int = 0
    total: int = 0
    verdict: str | None = None
    live_score: float | None = None
    threshold: float | None = None
    attempt: int = 0
    attempts: int = 0
    strategy: str | None = None
    seconds_left: float = 0.0

    def line(self) -> str:
        """The step in words, one line."""
        if self.kind == "waiting":
            left = math.ceil(self.seconds_left)
            return f"waiting {left} s before retry {self.attempt} of {self.model}"
        if self.kind == "retraining":
            return (f"retraining {self.model}: attempt {self.attempt} of {self.attempts} "
                    f"({self.strategy})")
        score = ("" if self.live_score is None or self.threshold is None
                 else f"  live {self.live_score:.3f} / {self.threshold:.2f}")
        return f"{self.done:2d}/{self.total} {self.model:<24} {self.verdict}{score}"


ProgressFn = Callable[[CheckStep], None]


class WallClock:
    """Where the check reads the time and waits between retrains: the real clock, a wait
    that a stop cuts short. The service always runs on this one; a rehearsal of simulated
    days (`backend.ml.backtest`) passes one whose time is the simulated day's and whose
    waits only move that time on, so the same check runs unchanged at another time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait `seconds`; True when `stop` was set (the check is being stopped)."""
        return stop.wait(seconds)
