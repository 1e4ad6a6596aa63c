"""A real uvicorn server in a child process for end-to-end tests: started with its own
environment, ready once /health answers, stopped with its whole process group."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from backend.ml.config import REPO_ROOT
from tests.processes import free_port, stop_group


class Server:
    def __init__(self, tmp: Path, db_url: str, *, workers: int, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.root, self.db_url = tmp, db_url
        self.logs_dir = tmp / "logs"
        full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DATABASE_URL": db_url,
                    "MODELS_DIR": str(tmp / "models"), "LOGS_DIR": str(self.logs_dir),
                    "TRAINING_N_JOBS": "2", "PERFORMANCE_CHECK_INTERVAL": "86400", **env}
        self.started = time.perf_counter()
        # The server's log goes to a file, not a pipe: a pipe nobody reads fills up and
        # blocks a server that runs long enough.
        self.stderr_path = tmp / f"uvicorn-{self.port}.err"
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "backend.app.main:app", "--host",
                 "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
                 "--log-level", "warning"],
                env=full_env, cwd=REPO_ROOT, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=stderr)

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log()}")
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server did not become ready: {self.log()}")

    def status(self) -> dict:
        response = httpx.get(f"{self.base}/ml/training/status", timeout=5)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def stop(self) -> None:
        stop_group(self.proc, timeout=20)
