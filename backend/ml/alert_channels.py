"""Alert delivery: e-mail over SMTP and a JSON webhook, retried in background threads.

A channel is a callable that takes the recorded alert and raises when delivery failed;
`Dispatcher` calls each one in its own thread, retrying with exponential backoff, and
never lets a failure reach the code that raised the alert. The threads are not daemons on
purpose: a short-lived process (a training child) waits for its alerts to go out before
it exits. Outcomes are kept on the returned `Delivery` so a caller can wait and report.

Secrets stay out of the log: the SMTP password and the webhook URL's path (Slack-style
URLs carry their token there) are scrubbed from every message we log, from the outcome
texts, and from httpx's own request lines.
"""

from __future__ import annotations

import html
import json
import logging
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from urllib.parse import urlsplit

import httpx

from backend.ml.config import Settings

logger = logging.getLogger(__name__)
TIMEOUT_SECONDS = 10.0
SUBJECT_PREFIX = "[ML scheduler]"
# Shown by name in the message; the rest of a record's details follow, in order.
_NAMED = ("id", "level", "kind", "model", "message", "timestamp", "score", "live_score",
          "threshold", "attempts", "error")

Channel = Callable[[Mapping[str, Any]], None]


class DeliveryError(Exception):
    """A channel's peer answered, but not with success."""


# ---- secrets ----------------------------------------------------------------------------


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by ***; longest first, so no part of one survives.
    A secret URL path keeps its slash, so a redacted URL still reads as one."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "/***" if secret.startswith("/") else "***")
    return text


class _LibraryRedaction(logging.Filter):
    """httpx logs each request's full URL at INFO; a webhook URL is a credential."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_REDACTION = _LibraryRedaction()
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).addFilter(_REDACTION)


def origin(url: str) -> str:
    """scheme://host[:port] of a URL: what may be shown of a webhook."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


# ---- what an alert says -----------------------------------------------------------------


def dashboard_link(record: Mapping[str, Any], dashboard_url: str) -> str:
    base = dashboard_url.split("#", 1)[0]
    return f"{base}#model-{record['model']}" if record.get("model") else base


def subject(record: Mapping[str, Any]) -> str:
    model = f": {record['model']}" if record.get("model") else ""
    return f"{SUBJECT_PREFIX} {str(record.get('level', '')).upper()} {record.get('kind')}{model}"


def _number(value: Any) -> str:
    return str(round(value, 4)) if isinstance(value, float) else str(value)


def _attempts(value: Any) -> list[str]:
    """A retry list (monitor: attempt, strategy, score, promoted) as lines; an int as is."""
    if not isinstance(value, list):
        return [str(value)]
    lines = []
    for item in value:
        if not isinstance(item, Mapping):
            lines.append(str(item))
            continue
        score = item.get("score")
        lines.append(f"attempt {item.get('attempt', '?')} ({item.get('strategy', '?')}): "
                     f"score {'-' if score is None else _number(score)}, "
                     f"{'promoted' if item.get('promoted') else 'not promoted'}")
    return lines


def facts(record: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(label, lines) pairs for the alert's body, in reading order, only those present."""
    rows: list[tuple[str, list[str]]] = [("Alert", [str(record.get("kind"))]),
                                         ("Level", [str(record.get("level"))])]
    if record.get("model"):
        rows.append(("Model", [str(record["model"])]))
    rows.append(("Message", [str(record.get("message", ""))]))
    for key, label in (("score", "Score"), ("live_score", "Live score"),
                       ("threshold", "Threshold")):
        if record.get(key) is not None:
            rows.append((label, [_number(record[key])]))
    if record.get("attempts") not in (None, [], 0):
        rows.append(("Attempts", _attempts(record["attempts"])))
    if record.get("error"):
        rows.append(("Error", [str(record["error"])]))
    for key, value in record.items():
        if key not in _NAMED and value is not None:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            rows.append((key, [_number(value) if isinstance(value, float) else text]))
    rows.append(("Time", [str(record.get("timestamp"))]))
    return rows


def plain_body(record: Mapping[str, Any], link: str) -> str:
    lines = []
    for label, values in facts(record):
        if len(values) == 1:
            lines.append(f"{label}: {values[0]}")
        else:
            lines += [f"{label}:", *(f"  {value}" for value in values)]
    return "\n".join([*lines, "", f"Dashboard: {link}", ""])


def html_body(record: Mapping[str, Any], link: str) -> str:
    rows = "".join(
        f'<tr><th align="left" valign="top">{html.escape(label)}</th>'
        f"<td>{'<br>'.join(html.escape(v) for v in values)}</td></tr>"
        for label, values in facts(record))
    return (f"<html><body><h3>{html.escape(subject(record))}</h3><table>{rows}</table>"
            f'<p><a href="{html.escape(link, quote=True)}">Open the dashboard</a> '
            f"({html.escape(link)})</p></body></html>")


# ---- channels ---------------------------------------------------------------------------


class EmailChannel:
    """One multipart (plain text and HTML) e-mail per alert to every recipient."""

    name = "email"

    def __init__(self, *, host: str, port: int, sender: str, recipients: Sequence[str],
                 dashboard_url: str, user: str | None = None, password: str | None = None,
                 starttls: bool = True, timeout: float = TIMEOUT_SECONDS) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.recipients = list(recipients)
        self.dashboard_url = dashboard_url
        self.user, self.starttls, self.timeout = user, starttls, timeout
        self._password = password
        self.secrets = tuple(filter(None, [password]))
        self.description = f"email ({host}:{port} -> {', '.join(self.recipients)})"

    def message(self, record: Mapping[str, Any]) -> EmailMessage:
        link = dashboard_link(record, self.dashboard_url)
        msg = EmailMessage()
        msg["Subject"] = subject(record)
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Date"] = format_datetime(datetime.now(UTC))
        # An explicit domain: the default asks DNS for this host's name, which can hang.
        msg["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or "localhost")
        msg.set_content(plain_body(record, link))
        msg.add_alternative(html_body(record, link), subtype="html")
        return msg

    def __call__(self, record: Mapping[str, Any]) -> None:
        message = self.message(record)
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:  # required when configured: never fall back to plain text
                smtp.starttls(context=ssl.create_default_context())
            if self.user:
                smtp.login(self.user, self._password or "")
            smtp.send_message(message)

    def __repr__(self) -> str:
        return f"<EmailChannel {self.description}>"


class WebhookChannel:
    """A JSON POST: a Slack-compatible `text` line plus the alert's fields."""

    name = "webhook"

    def __init__(self, url: str, *, dashboard_url: str,
                 timeout: float = TIMEOUT_SECONDS) -> None:
        self._url = url
        self.dashboard_url = dashboard_url
        self.timeout = timeout
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        # The path (where Slack-style URLs keep their token) and any password; scheme, host
        # and port stay readable.
        self.secrets = tuple(s for s in (path if path not in ("", "/") else "",
                                         parts.password or "") if s)
        _REDACTION.secrets.update(self.secrets)
        self.description = f"webhook ({origin(url)})"

    def payload(self, record: Mapping[str, Any]) -> dict[str, Any]:
        link = dashboard_link(record, self.dashboard_url)
        score = record.get("score", record.get("live_score"))
        figures = ", ".join(f"{label} {_number(record[key])}" for key, label in (
            ("score", "score"), ("live_score", "live score"), ("threshold", "threshold"))
            if record.get(key) is not None)
        text = f"{subject(record)} - {record.get('message', '')}"
        text += (f" ({figures})" if figures else "") + f" {link}"
        return {"text": text,
                **{key: record.get(key) for key in ("kind", "level", "model", "message",
                                                    "timestamp", "threshold", "attempts")},
                "score": score, "dashboard_url": link,
                "details": {k: v for k, v in record.items() if k not in _NAMED}}

    def __call__(self, record: Mapping[str, Any]) -> None:
        body = json.dumps(self.payload(record), default=str)
        response = httpx.post(self._url, content=body, timeout=self.timeout,
                              headers={"Content-Type": "application/json"})
        if not response.is_success:
            raise DeliveryError(f"HTTP {response.status_code}: {response.text[:200].strip()}")

    def __repr__(self) -> str:
        return f"<WebhookChannel {self.description}>"


def channels_from_settings(settings: Settings) -> list[Channel]:
    """The configured channels: e-mail with SMTP_HOST and a recipient, webhook with a URL."""
    channels: list[Channel] = []
    recipients = settings.alert_recipients()
    if settings.SMTP_HOST and recipients:
        channels.append(EmailChannel(
            host=settings.SMTP_HOST, port=settings.SMTP_PORT, sender=settings.ALERT_EMAIL_FROM,
            recipients=recipients, dashboard_url=settings.DASHBOARD_URL,
            user=settings.SMTP_USER, password=settings.SMTP_PASSWORD,
            starttls=settings.SMTP_STARTTLS))
    if settings.ALERT_WEBHOOK_URL:
        channels.append(WebhookChannel(settings.ALERT_WEBHOOK_URL,
                                       dashboard_url=settings.DASHBOARD_URL))
    return channels


def describe(channel: Channel) -> str:
    return str(getattr(channel, "description", None) or repr(channel))


# ---- delivery ---------------------------------------------------------------------------


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
        try:
            for attempt in range(1, self.attempts + 1):
                outcome.attempts = attempt
                try:
                    channel(record)
                except Exception as exc:  # any failure is retried, then reported, never raised
                    outcome.error = scrub(_reason(exc), secrets)
                else:
                    outcome.ok, outcome.error = True, None
                    logger.info("alert %s delivered via %s", record.get("kind"), outcome.channel)
                    return
                if attempt < self.attempts:
                    delay = self.backoff_seconds * 2 ** (attempt - 1)
                    logger.warning("alert %s: delivery via %s failed (attempt %d of %d): %s; "
                                   "retrying in %.2g s", record.get("kind"), outcome.channel,
                                   attempt, self.attempts, outcome.error, delay)
                    time.sleep(delay)
            logger.error("alert %s: delivery via %s failed after %d attempts: %s",
                         record.get("kind"), outcome.channel, self.attempts, outcome.error)
        finally:
            with self._lock:
                self._pending.discard(threading.current_thread())
