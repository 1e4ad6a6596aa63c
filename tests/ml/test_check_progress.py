"""A check says what it is doing: each model checked, each retrain attempt, and a backoff
wait counting down (in place on a terminal, one line when piped)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

from backend.ml.cli_progress import CheckPrinter
from backend.ml.config import Settings
from backend.ml.monitoring.check import Monitor
from backend.ml.monitoring.steps import CheckStep
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def monitor_for(tmp_path: Path, **options: object) -> Monitor:
    settings = Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'absent.db'}",
                        MODELS_DIR=tmp_path / "models", LOGS_DIR=tmp_path / "logs")
    return Monitor(Runner(Services.from_settings(settings)), **options)  # type: ignore[arg-type]


def test_a_backoff_is_told_each_second_and_stops_at_once(tmp_path: Path) -> None:
    steps: list[CheckStep] = []
    stop = threading.Event()
    monitor = monitor_for(tmp_path, on_progress=steps.append, stop=stop)
    started = time.monotonic()
    assert monitor._backoff(1.5, "delay_prediction", 2, 3) is False
    assert time.monotonic() - started >= 1.5
    assert [s.kind for s in steps] == ["waiting", "waiting"]
    assert steps[0].seconds_left > steps[1].seconds_left
    assert steps[0].line() == "waiting 2 s before retry 2 of delay_prediction"
    stop.set()
    started = time.monotonic()
    assert monitor._backoff(60, "delay_prediction", 3, 3) is True
    assert time.monotonic() - started < 1


def test_piped_one_line_per_wait_on_a_terminal_a_countdown(tmp_path: Path) -> None:
    steps = [CheckStep("checked", "delay_prediction", done=1, total=17, verdict="degraded",
                       live_score=0.512, threshold=0.7),
             CheckStep("retraining", "delay_prediction", attempt=1, attempts=3,
                       strategy="full"),
             *(CheckStep("waiting", "delay_prediction", attempt=2, attempts=3,
                         seconds_left=left) for left in (60.0, 59.0, 58.0)),
             CheckStep("retraining", "delay_prediction", attempt=2, attempts=3,
                       strategy="recency_weighted")]
    piped = io.StringIO()
    printer = CheckPrinter(piped)
    for step in steps:
        printer(step)
    printer.close()
    lines = piped.getvalue().splitlines()
    assert lines[0].startswith("[#---") and "1/17 delay_prediction" in lines[0]
    assert "degraded  live 0.512 / 0.70" in lines[0]
    assert lines[1:] == ["  retraining delay_prediction: attempt 1 of 3 (full)",
                         "waiting 60 s before retry 2 of delay_prediction",
                         "  retraining delay_prediction: attempt 2 of 3 (recency_weighted)"]

    terminal = Terminal()
    printer = CheckPrinter(terminal)
    for step in steps[2:5]:
        printer(step)
    printer.close()
    shown = terminal.getvalue()
    assert shown.count("\r") == 3 and shown.endswith("58 s before retry 2 of "
                                                     "delay_prediction\x1b[K\n")
