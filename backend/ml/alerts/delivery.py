"""Delivery of one alert to every channel, each in its own background thread, retried with
exponential backoff (tenacity); a failure is logged (scrubbed of the channel's secrets) and never
reaches the code that raised the alert. The threads are not daemons on purpose: a
short-lived process (a training child) waits for its alerts to go out before it exits.
Outcomes are kept on the returned `Delivery` so a caller can wait and report."""

from __future__ import annotations

import logging
import smtplib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tenacity import RetryCallState, RetryError, Retrying, stop_after_attempt, wait_exponential

from backend.ml.alerts.channels import Channel, DeliveryError, describe, scrub

logger = logging.getLogger(__name__)


def _reason(exc: Exception) -> str:
    if isinstance(exc, DeliveryError):
        return str(exc)
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(
            exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"{type(exc).__name__}: {exc.smtp_code} {text}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Outcome:
    """How delivery to one channel went; `error` is already scrubbed of secrets."""

    channel: str
    ok: bool = False
    attempts: int = 0
    error: str | None = None

    def line(self) -> str:
        if self.ok:
            return f"{self.channel}: ok"
        if self.attempts == 0:
            return f"{self.channel}: {self.error or 'pending'}"
        plural = "s" if self.attempts != 1 else ""
        return f"{self.channel}: failed after {self.attempts} attempt{plural}: {self.error}"


class Delivery:
    """One alert on its way to every channel; `wait` for the outcomes."""

    def __init__(self, record: Mapping[str, Any], outcomes: list[Outcome]) -> None:
        self.record = record
        self.outcomes = outcomes
        self._threads: list[threading.Thread] = []

    def wait(self, timeout: float | None = None) -> bool:
        """Whether every channel finished (delivered or gave up) within `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)


class Dispatcher:
    """Sends each alert to every channel in background threads, retrying with backoff."""

    def __init__(self, channels: Sequence[Channel] = (), *, attempts: int = 3,
                 backoff_seconds: float = 1.0) -> None:
        self.channels = list(channels)
        self.attempts = max(1, attempts)
        self.backoff_seconds = backoff_seconds
        self._pending: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def dispatch(self, record: Mapping[str, Any]) -> Delivery:
        """Start delivering `record`; returns at once."""
        delivery = Delivery(record, [Outcome(describe(c)) for c in self.channels])
        # A thread per channel: a slow mail server must not hold the webhook back.
        for channel, outcome in zip(self.channels, delivery.outcomes, strict=True):
            thread = threading.Thread(target=self._deliver, args=(channel, record, outcome),
                                      name=f"alert-{getattr(channel, 'name', 'channel')}",
                                      daemon=False)
            with self._lock:
                self._pending.add(thread)
            try:
                thread.start()
            except RuntimeError as exc:  # e.g. at interpreter shutdown: report, never raise
                with self._lock:
                    self._pending.discard(thread)
                outcome.error = f"not sent: {exc}"
                logger.error("alert %s: delivery via %s not started: %s", record.get("kind"),
                             outcome.channel, exc)
                continue
            delivery._threads.append(thread)
        return delivery

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for every delivery started so far; whether all finished within `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._pending)
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def _deliver(self, channel: Channel, record: Mapping[str, Any], outcome: Outcome) -> None:
        secrets = getattr(channel, "secrets", ())
        kind = record.get("kind")

        def send() -> None:
            outcome.attempts += 1
            try:
                channel(record)
            except Exception as exc:  # any failure is retried, then reported, never raised
                outcome.error = scrub(_reason(exc), secrets)
                raise

        def retrying_in(state: RetryCallState) -> None:
            delay = state.next_action.sleep if state.next_action is not None else 0.0
            logger.warning("alert %s: delivery via %s failed (attempt %d of %d): %s; "
                           "retrying in %.2g s", kind, outcome.channel, state.attempt_number,
                           self.attempts, outcome.error, delay)

        retrying = Retrying(stop=stop_after_attempt(self.attempts),
                            wait=wait_exponential(multiplier=self.backoff_seconds, min=0),
                            before_sleep=retrying_in)
        try:
            retrying(send)
        except RetryError:
            logger.error("alert %s: delivery via %s failed after %d attempts: %s",
                         kind, outcome.channel, self.attempts, outcome.error)
        else:
            outcome.ok, outcome.error = True, None
            logger.info("alert %s delivered via %s", kind, outcome.channel)
        finally:
            with self._lock:
                self._pending.discard(threading.current_thread())
