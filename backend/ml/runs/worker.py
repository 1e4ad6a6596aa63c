"""The private child process that runs a training run or a check, and the parent's side of
talking to it. Not a user interface: `python -m backend.ml` is.

The parent (the web process, the headless scheduler, an isolated `Runner`) starts
`python -m backend.ml.runs.worker`, writes one JSON request on its stdin and closes it:

    {"job": "train", "trigger": "manual", "models": [...], "actor": "api",
     "run_id": "run-...", "options": {name: TrainOptions fields}}
    {"job": "check"}

The child runs it in its own interpreter (so the parent never imports, fits or scores a
model, and never shares its GIL with that work) and writes ONE JSON line on stdout:

    {"ok": true, "result": <the run summary | the check entry>}
    {"ok": false, "error": {"kind": "run_in_progress" | "invalid" | "failed",
                            "message": "...", "run_id": "..." | null}}

`invalid` means the request itself was refused before anything ran; `failed` that the job
raised while running (it is on record in the history and alerted). The parent rebuilds
the exception from `kind` (`error_from`), never from the child's log text. Anything else
the child or a library prints goes to stderr, so stdout stays one parseable line. A child
that dies without answering (killed, out of memory) is a `WorkerError` naming its exit code.

SIGTERM asks a check to stop: it sets the stop Event the monitor waits on between retrain
attempts, so it ends at the next wait; a second SIGTERM ends the process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict
from types import FrameType
from typing import TYPE_CHECKING, Any

from backend.ml.config import REPO_ROOT, Settings
from backend.ml.history.document import TRIGGERS
from backend.ml.registry.aliases import ACTORS
from backend.ml.runs.progress import RunInProgressError

if TYPE_CHECKING:
    from backend.ml.training.trainer import TrainOptions

logger = logging.getLogger(__name__)
KINDS = ("run_in_progress", "invalid", "failed")


class WorkerError(RuntimeError):
    """A job failed in the worker (kind "failed"), or the worker died without an answer."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class InvalidRequest(ValueError):
    """The request was refused before anything ran."""


# ---- the parent's side -------------------------------------------------------------------

def train_request(*, trigger: str, models: list[str], actor: str, run_id: str,
                  options: Mapping[str, TrainOptions] | None = None) -> dict[str, Any]:
    return {"job": "train", "trigger": trigger, "models": list(models), "actor": actor,
            "run_id": run_id, "options": {n: asdict(o) for n, o in (options or {}).items()}}


def spawn(settings: Settings, request: Mapping[str, Any]) -> subprocess.Popen[str]:
    """Start a worker on `request` with these settings; it answers on its stdout."""
    env = {**os.environ, **settings.as_environment(),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-m", "backend.ml.runs.worker"], cwd=REPO_ROOT,
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdin is not None
    with child.stdin:  # one small line: the pipe buffer takes it without blocking
        child.stdin.write(json.dumps(dict(request)) + "\n")
    child.stdin = None  # closed: `communicate` must not flush it
    return child


def error_from(error: Mapping[str, Any]) -> Exception:
    """The exception a worker's `error` object stands for."""
    kind, message = error.get("kind"), str(error.get("message") or "worker failed")
    run_id = error.get("run_id")
    run_id = str(run_id) if run_id else None
    if kind == "run_in_progress":
        return RunInProgressError(run_id)
    if kind == "invalid":
        return InvalidRequest(message)
    return WorkerError(message, run_id=run_id)


def parse_answer(returncode: int | None, out: str, err: str) -> Any:
    """The result in a finished worker's stdout; raises what its error stands for."""
    for line in reversed(out.splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict) and isinstance(answer.get("ok"), bool):
            if answer["ok"]:
                return answer.get("result")
            error = answer.get("error")
            raise error_from(error if isinstance(error, dict) else {})
    last = (err.strip().splitlines() or ["(nothing on stderr)"])[-1]
    raise WorkerError(f"worker process exited with code {returncode} without an answer: "
                      f"{last}")


def collect(child: subprocess.Popen[str]) -> Any:
    """Wait for a worker and return its result (or raise its error)."""
    out, err = child.communicate()
    return parse_answer(child.returncode, out, err)


def run_job(settings: Settings, request: Mapping[str, Any]) -> Any:
    return collect(spawn(settings, request))


def end(child: subprocess.Popen[str], grace_seconds: float) -> None:
    """SIGTERM, then SIGKILL after `grace_seconds` if it is still there. Polls rather than
    waits: another thread is normally blocked in `communicate` on the same child."""
    if child.poll() is not None:
        return
    child.terminate()
    deadline = time.monotonic() + grace_seconds
    while child.poll() is None:
        if time.monotonic() >= deadline:
            logger.warning("worker %d did not stop within %.0f s; killing it", child.pid,
                           grace_seconds)
            child.kill()
            return
        time.sleep(0.05)


class ChildCheck:
    """The periodic check as a callable for the scheduler: each call runs one check in a
    worker and returns its history entry; `terminate()` (from the scheduler's stop) ends a
    running one, and refuses new ones until `reset()`."""

    def __init__(self, settings: Settings, *, grace_seconds: float = 5.0) -> None:
        self.settings = settings
        self.grace_seconds = grace_seconds
        self._child: subprocess.Popen[str] | None = None
        self._stopping = False
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            if self._stopping:
                raise WorkerError("the scheduler is stopping: no new check")
            child = self._child = spawn(self.settings, {"job": "check"})
        try:
            return collect(child)
        finally:
            with self._lock:
                self._child = None

    def terminate(self) -> None:
        with self._lock:
            self._stopping = True
            child = self._child
        if child is not None:
            end(child, self.grace_seconds)

    def reset(self) -> None:
        with self._lock:
            self._stopping = False


# ---- the child's side --------------------------------------------------------------------

def _train(request: Mapping[str, Any]) -> Any:
    from backend.ml.config import get_settings
    from backend.ml.fleet import specs
    from backend.ml.runs.runner import Runner
    from backend.ml.runs.services import Services
    from backend.ml.training.trainer import TrainOptions

    try:
        trigger, actor = str(request.get("trigger", "manual")), str(request.get("actor", "cli"))
        if trigger not in TRIGGERS:
            raise InvalidRequest(f"trigger must be one of {', '.join(TRIGGERS)}")
        if actor not in ACTORS:
            raise InvalidRequest(f"actor must be one of {', '.join(ACTORS)}")
        names = specs.parse_names(request.get("models"))
        options = {specs.get_spec(name).name: TrainOptions(**fields)
                   for name, fields in dict(request.get("options") or {}).items()}
        run_id = request.get("run_id")
        if run_id is not None and not isinstance(run_id, str):
            raise InvalidRequest("run_id must be a string")
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(str(exc).strip("'\"")) from None
    runner = Runner(Services.from_settings(get_settings()))
    return runner.run(trigger=trigger, models=names, actor=actor, run_id=run_id,
                      options=options)


def _check(stop: threading.Event) -> Any:
    from backend.ml.config import get_settings
    from backend.ml.monitoring.check import run_check
    from backend.ml.runs.runner import Runner
    from backend.ml.runs.services import Services

    return run_check(Runner(Services.from_settings(get_settings())), stop=stop)


def _stop_on_sigterm() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends us

    signal.signal(signal.SIGTERM, handler)
    return stop


def handle(request: Any) -> Any:
    """Run one request in this process; its result (raises InvalidRequest, or what it
    raised)."""
    if not isinstance(request, dict):
        raise InvalidRequest("a request is a JSON object")
    job = request.get("job")
    if job == "train":
        return _train(request)
    if job == "check":
        return _check(_stop_on_sigterm())
    raise InvalidRequest(f"job must be 'train' or 'check', not {job!r}")


def _configure_logging() -> None:
    """The job's lines go to the service's log, whoever started it."""
    try:
        from backend.ml.config import get_settings
        from backend.ml.logsetup import configure_logging

        configure_logging(get_settings().LOGS_DIR, console=False)
    except Exception as exc:  # a bad setting is reported by the job itself
        print(f"warning: not logging to the service's log: {exc}", file=sys.stderr)


def main() -> int:
    answer_to = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stray prints (ours or a library's) must not corrupt the answer line
    sys.stdout = sys.stderr
    run_id: str | None = None
    try:
        request = json.loads(sys.stdin.read())
        if isinstance(request, dict) and isinstance(request.get("run_id"), str):
            run_id = request["run_id"]
        _configure_logging()
        answer: dict[str, Any] = {"ok": True, "result": handle(request)}
    except RunInProgressError as exc:
        answer = {"ok": False, "error": {"kind": "run_in_progress", "message": str(exc),
                                         "run_id": exc.run_id}}
    except (InvalidRequest, json.JSONDecodeError) as exc:
        answer = {"ok": False, "error": {"kind": "invalid", "message": str(exc),
                                         "run_id": run_id}}
    except Exception as exc:
        logger.exception("worker job failed")
        answer = {"ok": False, "error": {"kind": "failed", "message": str(exc) or
                                         type(exc).__name__, "run_id": run_id}}
    with answer_to:
        answer_to.write(json.dumps(answer, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
