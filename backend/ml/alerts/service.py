"""Alerts: every alert is logged, recorded in the history and delivered, at most once per
cooldown.

`Alerts.notify(level, kind, message, model=...)` is the one way to raise one. The same
(kind, model) within `cooldown_seconds` is raised once, so a model that fails every hour
does not bury the operator. Alerts come from several processes (API workers, the
scheduler, training children), so the last time of each (kind, model) lives in a small
JSON file under LOGS_DIR, read and written under a cross-process lock. Delivery (e-mail,
webhook) runs in background threads: see `backend.ml.alerts.channels`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, RootModel

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
    level: str = "warning"


class Stamps(RootModel[dict[str, Stamp]]):
    root: dict[str, Stamp] = Field(default_factory=dict)


def _migrate_stamps(raw: Any) -> Any:
    """The previous release stored `{key: seconds}`; a level was not kept."""
    if isinstance(raw, dict):
        return {k: {"at": v} if isinstance(v, int | float) and not isinstance(v, bool) else v
                for k, v in raw.items()}
    return raw


class Cooldown:
    """When each (kind, model) was last raised, and at which level: in `path` (a StateFile
    shared by every process) or, with no path, in this object only. Wall-clock time,
    because processes share no other clock.

    Escalation-aware: an alert is suppressed only by one of the same kind and model at the
    same or a higher level within the cooldown, so a critical alert is never swallowed by
    a warning raised shortly before. An unwritable file means "no cooldown": a duplicate
    alert is better than a lost one. A stamp in the future (the clock was set back) does
    not suppress.
    """

    def __init__(self, seconds: float, *, path: Path | None = None,
                 clock: Callable[[], float] = time.time,
                 on_recover: Callable[[Recovery], None] | None = None) -> None:
        self.seconds = seconds
        self.file = (None if path is None else StateFile(
            path, Stamps, empty=Stamps, migrate=_migrate_stamps, on_recover=on_recover,
            lock_timeout=LOCK_TIMEOUT_SECONDS, indent=None,
            rebuilt_description=lambda _: "empty; the next alert of each kind is sent"))
        self._clock = clock
        self._memory = Stamps()
        self._lock = threading.Lock()  # our threads queue here, not in the file lock's poll

    def claim(self, kind: str, model: str | None, level: str = "warning") -> bool:
        """True (and the time is stored) unless the same alert, at this level or a higher
        one, was raised within the cooldown."""
        if self.seconds <= 0:
            return True
        key = f"{kind}|{model or ''}"
        with self._lock:
            if self.file is None:
                return self._decide(self._memory, key, level)
            try:
                # Held while deciding, so two processes cannot both find the slot free.
                with self.file.update() as stamps:
                    return self._decide(stamps, key, level)
            except (OSError, LockTimeout) as exc:
                logger.warning("alert cooldown state %s unusable (%s); raising the alert",
                               self.file.path, exc)
                return True

    def _decide(self, stamps: Stamps, key: str, level: str) -> bool:
        now = self._clock()
        last = stamps.root.get(key)
        if (last is not None and 0 <= now - last.at < self.seconds
                and LEVELS.get(last.level, 0) >= LEVELS[level]):
            return False
        stamps.root[key] = Stamp(at=now, level=level)
        for other in [k for k, s in stamps.root.items() if now - s.at >= self.seconds]:
            del stamps.root[other]  # expired: keeps the file as small as the set of live alerts
        return True


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
        """Log, record and deliver an alert; None when the same one was raised within the
        cooldown (by any process). Returns before delivery is done."""
        if level not in LEVELS:
            raise ValueError(f"alert level must be one of {', '.join(LEVELS)}")
        if not self.cooldown.claim(kind, model, level):
            logger.info("alert %s (%s) for %s suppressed: raised within the last %g s",
                        kind, level, model or "the fleet", self.cooldown.seconds)
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
