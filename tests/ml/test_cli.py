"""`python -m backend.ml` as an operator runs it: real processes, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.ml.config import REPO_ROOT


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "backend.ml", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=REPO_ROOT)


def test_train_json_has_the_guides_shape(small_db: str, tmp_path: Path) -> None:
    proc = run_cli("train", "--models", "scenario_analysis,predictive_maintenance", "--json",
                   env={"DATABASE_URL": small_db, "MODELS_DIR": str(tmp_path / "m"),
                        "LOGS_DIR": str(tmp_path / "l")})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("status", "timestamp", "duration_seconds", "models_trained",
                "successful_models", "failed_models", "avg_accuracy", "model_details"):
        assert key in out
    assert out["status"] == "success" and out["models_trained"] == 2
    detail = out["model_details"]["advanced_models"]["scenario_analysis"]
    for key in ("metric", "score", "baseline", "threshold", "passed", "rows",
                "duration_seconds"):
        assert key in detail
    assert proc.stderr == ""  # no progress noise around machine-readable output
    plain = run_cli("train", "--models", "scenario_analysis", env={"DATABASE_URL": small_db})
    assert plain.returncode == 0 and "1/1 scenario_analysis" in plain.stderr
    assert plain.stdout.startswith("success: 1/1 models trained")


def test_unknown_model_names_the_valid_ones(small_db: str) -> None:
    proc = run_cli("train", "--models", "delay_predictor", env={"DATABASE_URL": small_db})
    assert proc.returncode == 2
    assert "unknown model 'delay_predictor'" in proc.stderr
    assert "delay_prediction" in proc.stderr


@pytest.mark.parametrize("url,needle", [
    ("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", "cannot read table"),
    ("sqlite:////nonexistent/dir/x.db", "does not exist"),
    ("not a url", "DATABASE_URL"),
])
def test_bad_database_url_is_one_clear_line(url: str, needle: str) -> None:
    proc = run_cli("train", "--models", "scenario_analysis", env={"DATABASE_URL": url})
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_init_db_over_an_existing_database_refuses(small_db: str) -> None:
    proc = run_cli("init-db", "--days", "3", env={"DATABASE_URL": small_db})
    assert proc.returncode == 2 and "--force" in proc.stderr
    proc = run_cli("init-db", "--if-missing", env={"DATABASE_URL": small_db})
    assert proc.returncode == 0 and "already has data" in proc.stdout


def test_a_failed_model_makes_the_run_fail(tmp_path: Path) -> None:
    from tests.conftest import make_database
    url = make_database(tmp_path / "tiny.db", days=60)
    proc = run_cli("train", "--models", "supplier_performance,scenario_analysis", "--json",
                   env={"DATABASE_URL": url})
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["status"] == "partial" and out["failed_models"] == 1


def test_a_bad_setting_is_named_without_echoing_a_secret() -> None:
    proc = run_cli("models", env={"ALERT_WEBHOOK_URL": "hooks.example/T000/B000/s3cr3t",
                                  "SMTP_PORT": "seventy"})
    assert proc.returncode == 2
    assert "ALERT_WEBHOOK_URL: must be an http:// or https:// URL" in proc.stderr
    assert "SMTP_PORT" in proc.stderr and "'seventy'" in proc.stderr  # not secret: shown
    assert "s3cr3t" not in proc.stderr and "Traceback" not in proc.stderr


HEAVY = ("pandas", "numpy", "sklearn", "joblib", "sqlalchemy")


@pytest.mark.parametrize("command", ["history", "backups"])
def test_read_only_commands_import_no_ml_library(command: str, tmp_path: Path) -> None:
    wrapper = ("import sys\n"
               "from backend.ml.cli import main\n"
               f"code = main([{command!r}])\n"
               "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
               f"{HEAVY!r})\n"
               "print('HEAVY=' + ','.join(heavy))\n"
               "sys.exit(code)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MODELS_DIR": str(tmp_path / "m"),
           "LOGS_DIR": str(tmp_path / "l")}
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True,
                          env=env, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "HEAVY=", proc.stdout


def test_train_has_no_hidden_service_flags(small_db: str) -> None:
    for flag in (["--run-id", "run-x"], ["--actor", "api"], ["--options", "{}"]):
        proc = run_cli("train", "--models", "scenario_analysis", *flag,
                       env={"DATABASE_URL": small_db})
        assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr, flag


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    """`python -m backend.ml models | head -1`: the pipe closes under the command."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MODELS_DIR": str(tmp_path / "m"),
           "LOGS_DIR": str(tmp_path / "l")}
    try:
        proc = subprocess.run([sys.executable, "-m", "backend.ml", "models"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=60,
                              cwd=REPO_ROOT)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
