"""Real local peers for tests: an SMTP server (aiosmtpd) that keeps what it accepts."""

from __future__ import annotations

import email
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.controller import Controller

from tests.processes import free_port

SENDER, RECIPIENT = "ml@example.com", "ops@example.com"


class Inbox:
    """An aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Any] = []  # email.message.EmailMessage

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=default_policy))
        return "250 OK"


class SMTPServer:
    def __init__(self, **options: Any) -> None:
        self.inbox = Inbox()
        self.port = free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port,
                                     **options)
        self.running = False

    def start(self) -> None:
        self.controller.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.controller.stop()
            self.running = False

    def env(self, **extra: Any) -> dict[str, Any]:
        return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": self.port, "SMTP_STARTTLS": False,
                "ALERT_EMAIL_FROM": SENDER, "ALERT_EMAIL_TO": RECIPIENT, **extra}
