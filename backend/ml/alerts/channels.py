"""Alert channels: e-mail over SMTP and a JSON webhook. A channel is a callable that takes
the recorded alert and raises when delivery failed (`alert_delivery` retries it).

Secrets stay out of the log: the SMTP password and the webhook URL's path (Slack-style
URLs carry their token there) are scrubbed from every message we log, from the outcome
texts, and from httpx's own request lines.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from urllib.parse import urlsplit

import httpx

from backend.ml.alerts.messages import NAMED, dashboard_link, html_body, number, plain_body, subject
from backend.ml.config import Settings

logger = logging.getLogger(__name__)
TIMEOUT_SECONDS = 10.0

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
        figures = ", ".join(f"{label} {number(record[key])}" for key, label in (
            ("score", "score"), ("live_score", "live score"), ("threshold", "threshold"))
            if record.get(key) is not None)
        text = f"{subject(record)} - {record.get('message', '')}"
        text += (f" ({figures})" if figures else "") + f" {link}"
        return {"text": text,
                **{key: record.get(key) for key in ("kind", "level", "model", "message",
                                                    "timestamp", "threshold", "attempts")},
                "score": score, "dashboard_url": link,
                "details": {k: v for k, v in record.items() if k not in NAMED}}

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
