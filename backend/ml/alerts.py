"""Alerts: every alert is logged and recorded in the history, at most once per cooldown.

`Alerts.notify(level, kind, message, model=...)` is the one way to raise one. The same
(kind, model) within `cooldown_seconds` is recorded once and counted, so a model that
fails every hour does not bury the operator. More channels (e-mail, webhook) plug in as
callables that take the recorded alert.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from backend.ml.history import History

logger = logging.getLogger("backend.ml.alerts")
LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL}
Channel = Callable[[dict[str, Any]], None]


class Alerts:
    def __init__(self, history: History, *, cooldown_seconds: float = 3600.0,
                 channels: list[Channel] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.history = history
        self.cooldown_seconds = cooldown_seconds
        self.channels = channels or []
        self._clock = clock
        self._last: dict[tuple[str, str | None], float] = {}
        self._lock = threading.Lock()

    def notify(self, level: str, kind: str, message: str, *, model: str | None = None,
               **details: Any) -> dict[str, Any] | None:
        """Log and record an alert; None when the same one was raised within the cooldown."""
        if level not in LEVELS:
            raise ValueError(f"alert level must be one of {', '.join(LEVELS)}")
        key = (kind, model)
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.cooldown_seconds:
                logger.debug("alert %s for %s suppressed (cooldown)", kind, model)
                return None
            self._last[key] = now
        logger.log(LEVELS[level], "ALERT [%s] %s%s", kind, f"{model}: " if model else "",
                   message)
        record = self.history.append_alert({"level": level, "kind": kind, "model": model,
                                            "message": message, **details})
        for channel in self.channels:
            try:
                channel(record)
            except Exception:  # a broken channel must not lose the alert or stop the caller
                logger.exception("alert channel %r failed", channel)
        return record

    def callback(self, model: str | None = None) -> Callable[[str, str, str], None]:
        """A `(level, kind, message)` function for code that reports without knowing us."""
        def report(level: str, kind: str, message: str) -> None:
            self.notify(level, kind, message, model=model)

        return report
