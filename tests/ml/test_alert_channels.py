"""Alert delivery against real peers: an SMTP server (aiosmtpd) and an HTTP webhook on
127.0.0.1; the cooldown shared by processes; `alerts test`; the alert settings."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydantic
import pytest
from aiosmtpd.smtp import AuthResult

from backend.ml import cli
from backend.ml.alerts.service import COOLDOWN_FILE, Alerts
from backend.ml.config import REPO_ROOT, Settings, get_settings
from backend.ml.history import History
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from backend.ml.training.trainer import TrainOptions
from tests.peers import RECIPIENT, SENDER, SMTPServer

FAILING = "scenario_analysis"
HEALTHY = "decision_support"
# An invalid hyper-parameter: the real estimator raises when it is fitted.
BREAK = {FAILING: TrainOptions(params={"max_iter": -1})}
DASHBOARD = "http://dashboard.example:8000/"
PASSWORD = "pw-Zq81-never-logged"
HOOK_PATH = "/services/T000/B000/hooksecretXYZ"
FAST_BACKOFF = 0.01


class Webhook:
    """A local HTTP server recording each POST; answers `status` (500 echoes the path)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[str, dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.requests.append((self.path, json.loads(body)))
                reply = b"ok" if hook.status < 400 else f"no such hook {self.path}".encode()
                self.send_response(hook.status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}{HOOK_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.close()


def settings_for(tmp: Path, url: str = "sqlite:///absent.db", **extra: Any) -> Settings:
    return Settings(DATABASE_URL=url, MODELS_DIR=tmp / "models", LOGS_DIR=tmp / "logs",
                    TRAINING_N_JOBS=1, DASHBOARD_URL=DASHBOARD, **extra)


def services_for(settings: Settings) -> Services:
    services = Services.from_settings(settings)
    services.alerts.dispatcher.backoff_seconds = FAST_BACKOFF
    return services


def parts(message: Any) -> tuple[str, str]:
    plain = message.get_body(preferencelist=("plain",))
    rich = message.get_body(preferencelist=("html",))
    assert plain is not None and rich is not None
    return plain.get_content(), rich.get_content()


# ---- e-mail from a real training run ----------------------------------------------------


def test_a_failed_model_mails_once_then_cools_down_and_a_dead_server_stops_nothing(
        small_db: str, tmp_path: Path, smtp: SMTPServer,
        caplog: pytest.LogCaptureFixture) -> None:
    services = services_for(settings_for(tmp_path / "up", small_db, **smtp.env()))
    runner = Runner(services)
    summary = runner.run(models=[FAILING], options=BREAK)
    assert summary["failed_models"] == 1
    assert services.alerts.flush(30)
    [alert] = [a for a in services.history.alerts() if a["model"] == FAILING]
    [mail] = smtp.inbox.messages
    assert mail["To"] == RECIPIENT and mail["From"] == SENDER
    assert mail["Subject"] == f"[ML scheduler] ERROR {alert['kind']}: {FAILING}"
    link = f"{DASHBOARD}#model-{FAILING}"
    error = summary["model_details"]["advanced_models"][FAILING]["error"]
    assert "max_iter" in error
    for body in parts(mail):
        assert FAILING in body and link in body and alert["kind"] in body
    plain, rich = parts(mail)
    assert f"Error: {error}" in plain
    assert f'<a href="{link}">' in rich and "max_iter" in rich

    # The same failure within the cooldown: no second e-mail, no second alert.
    runner.run(models=[FAILING], options=BREAK)
    assert services.alerts.flush(30)
    assert services.alerts.notify(alert["level"], alert["kind"], "again", model=FAILING) is None
    assert len(smtp.inbox.messages) == 1
    assert [a["id"] for a in services.history.alerts() if a["model"] == FAILING] == [alert["id"]]

    # The mail server is gone: delivery gives up after its attempts, the run is unharmed.
    smtp.stop()
    caplog.set_level(logging.INFO)
    down = services_for(settings_for(tmp_path / "down", small_db, **smtp.env()))
    summary = Runner(down).run(models=[FAILING, HEALTHY], options=BREAK)
    assert down.alerts.flush(30)
    assert summary["status"] == "partial" and summary["successful_models"] == 1
    assert down.store.aliases(HEALTHY)["production"] == "v0001"
    assert down.store.load(HEALTHY)[0] is not None
    channel = f"email (127.0.0.1:{smtp.port} -> {RECIPIENT})"
    failures = [r for r in caplog.records if r.name == "backend.ml.alerts.delivery"
                and f"alert {alert['kind']}: delivery via {channel}" in r.getMessage()]
    assert [r.levelname for r in failures] == ["WARNING", "WARNING", "ERROR"]
    assert "failed after 3 attempts: ConnectionRefusedError" in failures[-1].getMessage()


def test_the_email_lists_retry_attempts_and_escapes_html(tmp_path: Path,
                                                         smtp: SMTPServer) -> None:
    alerts = services_for(settings_for(tmp_path, **smtp.env())).alerts
    attempts = [{"attempt": 1, "strategy": "full", "score": 0.6123, "promoted": False},
                {"attempt": 2, "strategy": "search", "score": 0.64, "promoted": True}]
    alerts.notify("critical", "accuracy_below_threshold", "score <b>fell</b> & stayed",
                  model="delay_prediction", live_score=0.61, threshold=0.75,
                  attempts=attempts, run_id="run-x")
    assert alerts.flush(30)
    [mail] = smtp.inbox.messages
    assert mail["Subject"] == "[ML scheduler] CRITICAL accuracy_below_threshold: delay_prediction"
    plain, rich = (part.replace("\r\n", "\n") for part in parts(mail))
    assert "Attempts:\n  attempt 1 (full): score 0.6123, not promoted\n  attempt 2" in plain
    assert "attempt 2 (search): score 0.64, promoted" in rich
    assert "Live score: 0.61" in plain and "Threshold: 0.75" in plain
    assert "run_id: run-x" in plain
    assert "<b>fell</b>" not in rich and "&lt;b&gt;fell&lt;/b&gt; &amp; stayed" in rich


# ---- webhook ----------------------------------------------------------------------------


def test_the_webhook_gets_a_slack_text_and_the_fields(tmp_path: Path, webhook: Webhook) -> None:
    alerts = services_for(settings_for(tmp_path, ALERT_WEBHOOK_URL=webhook.url)).alerts
    record = alerts.notify("critical", "accuracy_below_threshold", "three retrains failed",
                           model="delay_prediction", score=0.61, threshold=0.75, attempts=3,
                           run_id="run-y")
    assert record is not None and alerts.flush(30)
    [(path, payload)] = webhook.requests
    assert path == HOOK_PATH
    link = f"{DASHBOARD}#model-delay_prediction"
    assert payload["text"] == ("[ML scheduler] CRITICAL accuracy_below_threshold: "
                               "delay_prediction - three retrains failed "
                               f"(score 0.61, threshold 0.75) {link}")
    assert payload["kind"] == "accuracy_below_threshold" and payload["level"] == "critical"
    assert payload["model"] == "delay_prediction" and payload["score"] == 0.61
    assert payload["threshold"] == 0.75 and payload["attempts"] == 3
    assert payload["dashboard_url"] == link and payload["timestamp"] == record["timestamp"]
    assert payload["details"] == {"run_id": "run-y"}


def test_failing_deliveries_are_bounded_and_never_log_a_secret(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(server: Any, session: Any, envelope: Any, mechanism: str,
               auth_data: Any) -> AuthResult:  # a server that quotes what it was sent
        return AuthResult(success=False, handled=False,
                          message=f"535 5.7.8 bad credentials {auth_data.password.decode()}")

    smtp = SMTPServer(authenticator=refuse, auth_require_tls=False)
    smtp.start()
    webhook = Webhook(status=500)
    caplog.set_level(logging.DEBUG)  # httpx's own request lines included
    try:
        settings = settings_for(tmp_path, ALERT_WEBHOOK_URL=webhook.url,
                                **smtp.env(SMTP_USER="mailer", SMTP_PASSWORD=PASSWORD))
        alerts = services_for(settings).alerts
        delivery = alerts.send("error", "training_failed", "boom", model=FAILING)
        assert delivery.wait(30)
    finally:
        smtp.stop()
        webhook.close()
    assert len(webhook.requests) == settings.ALERT_DELIVERY_ATTEMPTS == 3
    assert smtp.inbox.messages == []
    email_outcome, hook_outcome = delivery.outcomes
    assert not email_outcome.ok and email_outcome.attempts == 3
    assert email_outcome.error == "SMTPAuthenticationError: 535 5.7.8 bad credentials ***"
    assert hook_outcome.line() == (f"webhook (http://127.0.0.1:{webhook.server.server_port}):"
                                   " failed after 3 attempts: HTTP 500: no such hook /***")
    errors = [r.getMessage() for r in caplog.records
              if r.levelno == logging.ERROR and r.name == "backend.ml.alerts.delivery"]
    assert len(errors) == 2 and all("failed after 3 attempts" in e for e in errors)
    # Everything our side logged (aiosmtpd, the test's server, logs to "mail.log").
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name != "mail.log")
    # httpx logged its request line, with the path redacted:
    assert f"POST http://127.0.0.1:{webhook.server.server_port}/*** " in logged
    for secret in (PASSWORD, HOOK_PATH, "hooksecretXYZ"):
        assert secret not in logged
        assert all(secret not in (o.error or "") for o in delivery.outcomes)


# ---- cooldown across processes ----------------------------------------------------------


def test_the_cooldown_is_shared_by_processes_and_survives_a_corrupt_file(
        tmp_path: Path) -> None:
    settings = settings_for(tmp_path, ALERT_COOLDOWN_SECONDS=600)
    api, scheduler = Services.from_settings(settings), Services.from_settings(settings)
    assert api.alerts.notify("error", "training_failed", "one", model="x") is not None
    assert scheduler.alerts.notify("error", "training_failed", "two", model="x") is None
    assert scheduler.alerts.notify("error", "training_failed", "other", model="y") is not None
    code = ("from backend.ml.config import get_settings\n"
            "from backend.ml.runs.services import Services\n"
            "print(Services.from_settings(get_settings()).alerts.notify("
            "'error', 'training_failed', 'three', model='x'))")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "LOGS_DIR": str(settings.LOGS_DIR),
           "MODELS_DIR": str(settings.MODELS_DIR), "ALERT_COOLDOWN_SECONDS": "600"}
    child = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "None"
    assert [a["message"] for a in api.history.alerts()] == ["other", "one"]

    (settings.LOGS_DIR / COOLDOWN_FILE).write_text("{not json")
    assert api.alerts.notify("error", "training_failed", "four", model="x") is not None


def test_the_cooldown_expires_by_the_wall_clock(tmp_path: Path) -> None:
    now = [1_000_000.0]
    history = History(tmp_path / "history.json")

    def alerts() -> Alerts:  # a fresh object each time: only the file remembers
        return Alerts(history, cooldown_seconds=60, state_path=tmp_path / COOLDOWN_FILE,
                      clock=lambda: now[0])

    assert alerts().notify("warning", "drift_detected", "a", model="m") is not None
    now[0] += 59
    assert alerts().notify("warning", "drift_detected", "b", model="m") is None
    now[0] += 2
    assert alerts().notify("warning", "drift_detected", "c", model="m") is not None
    now[0] -= 3600  # the clock was set back: a stamp in the future does not suppress
    assert alerts().notify("warning", "drift_detected", "d", model="m") is not None


# ---- the command line -------------------------------------------------------------------


def run_alerts_test(monkeypatch: pytest.MonkeyPatch, env: dict[str, Any]) -> int:
    for name in ("SMTP_HOST", "ALERT_EMAIL_TO", "ALERT_WEBHOOK_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    get_settings.cache_clear()
    try:
        return cli.main(["alerts", "test"])
    finally:
        get_settings.cache_clear()


def test_cli_alerts_test_reports_each_channel(tmp_path: Path, smtp: SMTPServer,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    webhook = Webhook()
    base = {"LOGS_DIR": tmp_path / "logs", "MODELS_DIR": tmp_path / "models",
            "DASHBOARD_URL": DASHBOARD, **smtp.env()}
    try:
        assert run_alerts_test(monkeypatch, {**base, "ALERT_WEBHOOK_URL": webhook.url}) == 0
        email_line = f"email (127.0.0.1:{smtp.port} -> {RECIPIENT}): ok"
        hook_line = f"webhook (http://127.0.0.1:{webhook.server.server_port}): ok"
        assert capsys.readouterr().out.splitlines() == [email_line, hook_line]
        [mail] = smtp.inbox.messages
        assert mail["Subject"] == "[ML scheduler] INFO test"
        assert "test alert" in parts(mail)[0]
        assert webhook.requests[0][1]["kind"] == "test"
        assert not (tmp_path / "logs" / COOLDOWN_FILE).exists()  # the cooldown is untouched
        history = History(tmp_path / "logs" / "training_history.json")
        assert [a["kind"] for a in history.alerts()] == ["test"]

        webhook.status = 500
        assert run_alerts_test(monkeypatch, {**base, "ALERT_WEBHOOK_URL": webhook.url,
                                             "ALERT_DELIVERY_ATTEMPTS": 2}) == 1
        out = capsys.readouterr().out.splitlines()
        assert out[0] == email_line
        assert out[1].startswith(f"webhook (http://127.0.0.1:{webhook.server.server_port}): "
                                 "failed after 2 attempts: HTTP 500")
        assert "hooksecretXYZ" not in out[1]
    finally:
        webhook.close()


def test_cli_alerts_test_without_a_channel_exits_1(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run_alerts_test(monkeypatch, {"LOGS_DIR": tmp_path / "logs"}) == 1
    assert capsys.readouterr().out.strip() == (
        "no alert channel is configured (set SMTP_HOST and ALERT_EMAIL_TO, or "
        "ALERT_WEBHOOK_URL)")


# ---- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("values,variable,needle", [
    ({"ALERT_WEBHOOK_URL": "hooks.slack.com/services/T/B/x"}, "ALERT_WEBHOOK_URL",
     "http:// or https://"),
    ({"ALERT_WEBHOOK_URL": "ftp://example.com/x"}, "ALERT_WEBHOOK_URL", "http:// or https://"),
    ({"ALERT_EMAIL_TO": "ops@example.com, ops.example.com"}, "ALERT_EMAIL_TO",
     "'ops.example.com' is not an e-mail address"),
    ({"ALERT_EMAIL_TO": "a@b@c"}, "ALERT_EMAIL_TO", "not an e-mail address"),
    ({"SMTP_HOST": "smtp.example.com", "SMTP_PASSWORD": PASSWORD}, "ALERT_EMAIL_TO",
     "SMTP_HOST is set but ALERT_EMAIL_TO is empty"),
    ({"DASHBOARD_URL": "dashboard:8000"}, "DASHBOARD_URL", "http:// or https://"),
], ids=["webhook-no-scheme", "webhook-ftp", "recipient", "two-ats", "smtp-without-to",
        "dashboard"])
def test_bad_alert_settings_name_the_variable(values: dict[str, str], variable: str,
                                              needle: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings(**values)  # type: ignore[arg-type]
    [error] = caught.value.errors()
    assert error["loc"] == (variable,) and needle in error["msg"]
    assert PASSWORD not in str(caught.value)


def test_good_alert_settings_build_the_channels(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, SMTP_HOST="smtp.example.com",
                            ALERT_EMAIL_TO=" a@example.com, b@example.com ,",
                            ALERT_WEBHOOK_URL="https://hooks.example.com/services/T/B/x")
    assert settings.alert_recipients() == ["a@example.com", "b@example.com"]
    described = [str(getattr(c, "description", "")) for c in
                 Services.from_settings(settings).alerts.channels]
    assert described == ["email (smtp.example.com:587 -> a@example.com, b@example.com)",
                         "webhook (https://hooks.example.com)"]
    blank = settings_for(tmp_path, SMTP_HOST="", ALERT_WEBHOOK_URL="")
    assert blank.SMTP_HOST is None and blank.ALERT_WEBHOOK_URL is None
    assert Services.from_settings(blank).alerts.channels == []
