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

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backend.ml.alerts.channels import Channel, channels_from_settings
from backend.ml.alerts.delivery import Delivery, Dispatcher
from backend.ml.config import Settings
from backend.ml.fsio import LockTimeout, atomic_write_json, file_lock, read_json
from backend.ml.history.document import History

logger = logging.getLogger("backend.ml.alerts.service")
LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL}
COOLDOWN_FILE = "alert_cooldown.json"
LOCK_TIMEOUT_SECONDS = 10.0


class Cooldown:
    """When each (kind, model) was last raised: in `path` (shared by every process) or, with
    no path, in this object only. Wall-clock time, because processes share no other clock.

    A missing, corrupt or unwritable file means "no cooldown": a duplicate alert is better
    than a lost one. A stamp in the future (the clock was set back) does not suppress.
    """

    def __init__(self, seconds: float, *, path: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.seconds = seconds
        self.path = path
        self._clock = clock
        self._memory: dict[str, float] = {}
        self._lock = threading.Lock()  # our threads queue here, not in the file lock's poll

    def claim(self, kind: str, model: str | None) -> bool:
        """True (and the time is stored) unless the same alert was raised within the cooldown."""
        if self.seconds <= 0:
            return True
        key = f"{kind}|{model or ''}"
        with self._lock:
            if self.path is None:
                return self._decide(self._memory, key)
            try:
                # Held while deciding, so two processes cannot both find the slot free.
                with file_lock(self.path.with_name(self.path.name + ".lock"),
                               timeout=LOCK_TIMEOUT_SECONDS, purpose="alert cooldown"):
                    stamps = self._read()
                    if not self._decide(stamps, key):
                        return False
                    atomic_write_json(self.path, stamps, indent=None)
                    return True
            except (OSError, LockTimeout) as exc:
                logger.warning("alert cooldown state %s unusable (%s); raising the alert",
                               self.path, exc)
                return True

    def _decide(self, stamps: dict[str, float], key: str) -> bool:
        now = self._clock()
        last = stamps.get(key)
        if last is not None and 0 <= now - last < self.seconds:
            return False
        stamps[key] = now
        for other in [k for k, t in stamps.items() if now - t >= self.seconds]:
            del stamps[other]  # expired: keeps the file as small as the set of live alerts
        return True

    def _read(self) -> dict[str, float]:
        assert self.path is not None
        with contextlib.suppress(OSError, ValueError):
            raw = read_json(self.path)
            if isinstance(raw, dict):
                return {str(k): float(v) for k, v in raw.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return {}


class Alerts:
    def __init__(self, history: History, *, cooldown_seconds: float = 3600.0,
                 channels: Sequence[Channel] | None = None, state_path: Path | None = None,
                 delivery_attempts: int = 3, backoff_seconds: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.history = history
        self.cooldown = Cooldown(cooldown_seconds, path=state_path, clock=clock)
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
        if not self.cooldown.claim(kind, model):
            logger.debug("alert %s for %s suppressed (cooldown)", kind, model)
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

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for deliveries in flight; whether all finished within `timeout`."""
        return self.dispatcher.flush(timeout)

    def callback(self, model: str | None = None) -> Callable[[str, str, str], None]:
        """A `(level, kind, message)` function for code that reports without knowing us."""
        def report(level: str, kind: str, message: str) -> None:
            self.notify(level, kind, message, model=model)

        return report
