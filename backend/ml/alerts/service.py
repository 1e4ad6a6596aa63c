"""Alerts: every alert is logged, recorded in the history and delivered, at most once per
cooldown.

`Alerts.notify(level, kind, message, model=...)` is the one way to raise one. The same
kind for the same model at the same level within `cooldown_seconds` is raised once, so a
model that fails every hour does not bury the operator; a graver level always passes.
Alerts come from several processes (API workers, the scheduler, training children), so
when each (kind, model, level) was last raised, and how many alerts the cooldown held back,
live in a small JSON file under LOGS_DIR, read and written under a cross-process lock.
Delivery (e-mail, webhook) runs in background threads: see `backend.ml.alerts.channels`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from backend.ml.alerts.channels import Channel, channels_from_settings
from backend.ml.alerts.delivery import Delivery, Dispatcher
from backend.ml.config import Settings
from backend.ml.fsio import LockTimeout
from backend.ml.history import History
from backend.ml.statefile import Recovery, StateFile

logger = logging.getLogger("backend.ml.alerts.service")
LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL}
COOLDOWN_FILE = "alert_cooldown.json"
LOCK_TIMEOUT_SECONDS = 10.0


class Stamp(BaseModel):
    at: float


class CooldownState(BaseModel):
    """`stamps`: when each `kind|model|level` was last raised (live ones only);
    `suppressed`: how many alerts of each `kind|level` the cooldown held back, all time
    (since the file was made)."""

    stamps: dict[str, Stamp] = Field(default_factory=dict)
    suppressed: dict[str, int] = Field(default_factory=dict)


def _migrate_stamps(raw: Any) -> Any:
    """Earlier releases kept only `{kind|model: seconds}` (the first) or
    `{kind|model: {"at", "level"}}` (the second), without a count of suppressions."""
    if not isinstance(raw, dict) or set(raw) & {"stamps", "suppressed"}:
        return raw
    stamps = {}
    for key, value in raw.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = {"at": value}
        if not isinstance(value, dict):
            return raw  # not an older shape either: validation reports it
        level = value.get("level", "warning")
        stamps[f"{key}|{level}"] = {"at": value.get("at")}
    return {"stamps": stamps, "suppressed": {}}


def cooldown_file(path: Path, *, on_recover: Callable[[Recovery], None] | None = None
                  ) -> StateFile[CooldownState]:
    return StateFile(path, CooldownState, empty=CooldownState, migrate=_migrate_stamps,
                     on_recover=on_recover, lock_timeout=LOCK_TIMEOUT_SECONDS, indent=None,
                     rebuilt_description=lambda _: "empty; the next alert of each kind is "
                                                   "sent and the count of suppressed ones "
                                                   "starts again")


def suppressed_counts(logs_dir: Path, *, on_recover: Callable[[Recovery], None] | None = None
                      ) -> dict[tuple[str, str], int]:
    """Alerts the cooldown held back, by (kind, level), all time, from any process."""
    state = cooldown_file(Path(logs_dir) / COOLDOWN_FILE, on_recover=on_recover).read()
    counts: dict[tuple[str, str], int] = {}
    for key, count in state.suppressed.items():
        kind, _, level = key.rpartition("|")
        counts[(kind, level)] = count
    return counts


@dataclass(frozen=True)
class Held:
    """The earlier alert that holds a new one back: its level and when it was raised."""

    level: str
    at: float

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.at, UTC).isoformat(timespec="seconds")
        return f"the {self.level} alert of {when}"


class Cooldown:
    """When each (kind, model, level) was last raised: in `path` (a StateFile shared by
    every process) or, with no path, in this object only. Wall-clock time, because
    processes share no other clock.

    Escalation-aware: an alert is held back only by one of the same kind and model at the
    same or a higher level within the cooldown, so a critical alert is never swallowed by a
    warning raised shortly before, and a warning after a critical one stays quiet. Each
    level keeps its own time, so a critical alert does not restart the warning's
    cooldown. Every alert held back is counted by kind and level. An unwritable file
    means "no cooldown": a duplicate alert is better than a lost one. A stamp in the future
    (the clock was set back) does not suppress.
    """

    def __init__(self, seconds: float, *, path: Path | None = None,
                 clock: Callable[[], float] = time.time,
                 on_recover: Callable[[Recovery], None] | None = None) -> None:
        self.seconds = seconds
        self.file = None if path is None else cooldown_file(path, on_recover=on_recover)
        self._clock = clock
        self._memory = CooldownState()
        self._lock = threading.Lock()  # our threads queue here, not in the file lock's poll

    def claim(self, kind: str, model: str | None, level: str = "warning") -> bool:
        """True (and the time is stored) unless the same alert, at this level or a higher
        one, was raised within the cooldown."""
        return self.take(kind, model, level) is None

    def take(self, kind: str, model: str | None, level: str = "warning") -> Held | None:
        """None when the alert may go (its time is stored), else the earlier alert that
        holds it back (and the suppression is counted)."""
        if self.seconds <= 0:
            return None
        with self._lock:
            if self.file is None:
                return self._decide(self._memory, kind, model, level)
            try:
                # Held while deciding, so two processes cannot both find the slot free.
                with self.file.update() as state:
                    return self._decide(state, kind, model, level)
            except (OSError, LockTimeout) as exc:
                logger.warning("alert cooldown state %s unusable (%s); raising the alert",
                               self.file.path, exc)
                return None

    def _decide(self, state: CooldownState, kind: str, model: str | None,
                level: str) -> Held | None:
        now = self._clock()
        prefix = f"{kind}|{model or ''}|"
        holding = [Held(key.removeprefix(prefix), stamp.at)
                   for key, stamp in state.stamps.items()
                   if key.startswith(prefix) and 0 <= now - stamp.at < self.seconds
                   and LEVELS.get(key.removeprefix(prefix), 0) >= LEVELS[level]]
        if holding:
            counted = f"{kind}|{level}"
            state.suppressed[counted] = state.suppressed.get(counted, 0) + 1
            # The nearest level names the reason: a warning is held by the warning before
            # it even when a critical one came in between.
            return min(holding, key=lambda held: (LEVELS.get(held.level, 0), -held.at))
        state.stamps[prefix + level] = Stamp(at=now)
        for other in [k for k, s in state.stamps.items() if now - s.at >= self.seconds]:
            del state.stamps[other]  # expired: keeps the file as small as the set of live alerts
        return None


class Alerts:
    def __init__(self, history: History, *, cooldown_seconds: float = 3600.0,
                 channels: Sequence[Channel] | None = None, state_path: Path | None = None,
                 delivery_attempts: int = 3, backoff_seconds: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.history = history
        self.cooldown = Cooldown(cooldown_seconds, path=state_path, clock=clock,
                                 on_recover=self.report_recovery)
        self.dispatcher = Dispatcher(channels or [], attempts=delivery_attempts,
                                     backoff_seconds=backoff_seconds)

    @classmethod
    def from_settings(cls, settings: Settings, history: History) -> Alerts:
        """The service's alerts: cooldown shared through LOGS_DIR, channels as configured."""
        return cls(history, cooldown_seconds=settings.ALERT_COOLDOWN_SECONDS,
                   channels=channels_from_settings(settings),
                   state_path=settings.LOGS_DIR / COOLDOWN_FILE,
                   delivery_attempts=settings.ALERT_DELIVERY_ATTEMPTS)

    @property
    def channels(self) -> list[Channel]:
        return self.dispatcher.channels

    def notify(self, level: str, kind: str, message: str, *, model: str | None = None,
               **details: Any) -> dict[str, Any] | None:
        """Log, record and deliver an alert; None when the same one, at this level or a
        graver one, was raised within the cooldown (by any process): that is logged at
        INFO and counted. Returns before delivery is done."""
        if level not in LEVELS:
            raise ValueError(f"alert level must be one of {', '.join(LEVELS)}")
        held = self.cooldown.take(kind, model, level)
        if held is not None:
            logger.info("alert %s (%s) for %s suppressed by %s, within the %g s cooldown: %s",
                        kind, level, model or "the fleet", held.describe(),
                        self.cooldown.seconds, message)
            return None
        return dict(self.send(level, kind, message, model=model, **details).record)

    def send(self, level: str, kind: str, message: str, *, model: str | None = None,
             **details: Any) -> Delivery:
        """Log, record and deliver an alert now, ignoring (and not touching) the cooldown."""
        if level not in LEVELS:
            raise ValueError(f"alert level must be one of {', '.join(LEVELS)}")
        logger.log(LEVELS[level], "ALERT [%s] %s%s", kind, f"{model}: " if model else "",
                   message)
        record = self.history.append_alert({"level": level, "kind": kind, "model": model,
                                            "message": message, **details})
        return self.dispatcher.dispatch(record)

    def report_recovery(self, recovery: Recovery) -> None:
        """The one alert for a damaged state file that was moved aside and rebuilt."""
        self.send("critical", "state_file_recovered", recovery.message(),
                  path=str(recovery.path), moved_to=str(recovery.moved_to),
                  reason=recovery.reason)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for deliveries in flight; whether all finished within `timeout`."""
        return self.dispatcher.flush(timeout)

    def callback(self, model: str | None = None) -> Callable[[str, str, str], None]:
        """A `(level, kind, message)` function for code that reports without knowing us."""
        def report(level: str, kind: str, message: str) -> None:
            self.notify(level, kind, message, model=model)

        return report
