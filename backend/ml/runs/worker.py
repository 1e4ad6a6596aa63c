"""The private child process that runs a training run or a check, and the parent's side of
talking to it. Not a user interface: `python -m backend.ml` is.

The parent (the web process, the headless scheduler, an isolated `Runner`) starts
`python -m backend.ml.runs.worker` with one end of a Unix socket pair as its stdin, and
sends ONE JSON request line on it, then closes it:

    {"job": "train", "trigger": "manual", "models": [...], "actor": "api",
     "run_id": "run-...", "options": {name: TrainOptions fields},
     "handover": {"started_at": "<ISO time>"}}
    {"job": "check"}

A train request with `handover` carries, as SCM_RIGHTS ancillary data, the descriptor of
the training lock the parent took for it (see `progress.RunLock`); the parent has already
written the run's progress and its "running" record, so the child continues that run under
that lock. The child imports its libraries before it reads the request, so a worker
started ahead of need (`launcher.Spare`) answers a request without that cost.

The child runs the job in its own interpreter (so the parent never imports, fits or
scores a model, and never shares its GIL with that work) and writes ONE JSON line on
stdout:

    {"ok": true, "result": <the run summary | the check entry>}
    {"ok": false, "error": {"kind": "run_in_progress" | "invalid" | "failed",
                            "message": "...", "run_id": "..." | null}}

`invalid` means the request itself was refused before anything ran; `failed` that the job
raised while running (it is on record in the history and alerted). The parent rebuilds
the exception from `kind` (`error_from`), never from the child's log text. Anything else
the child or a library prints goes to stderr, so stdout stays one parseable line; after
the answer both are closed, so the parent has everything while the interpreter still winds
down (a second, with scikit-learn loaded). A child that dies without answering (killed,
out of memory, a broken install) is a `WorkerError` naming its exit code and the tail of
its stderr.

SIGTERM asks a check to stop: it sets the stop Event the monitor waits on between retrain
attempts, so it ends at the next wait; a second SIGTERM ends the process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from types import FrameType
from typing import TYPE_CHECKING, Any

from backend.ml.config import Settings
from backend.ml.history.document import TRIGGERS
from backend.ml.registry.aliases import ACTORS
from backend.ml.runs.launcher import AHEAD, spawn
from backend.ml.runs.preload import Preload, warm_up
from backend.ml.runs.progress import RunInProgressError
from backend.ml.runs.services import Services

if TYPE_CHECKING:
    from backend.ml.training.trainer import TrainOptions

logger = logging.getLogger(__name__)
KINDS = ("run_in_progress", "invalid", "failed")
STDERR_TAIL_LINES = 8
STDERR_TAIL_CHARS = 1500
MAX_REQUEST_BYTES = 1 << 20


class WorkerError(RuntimeError):
    """A job failed in the worker (kind "failed"), or the worker died without an answer."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class InvalidRequest(ValueError):
    """The request was refused before anything ran."""


# ---- the parent's side -------------------------------------------------------------------

def train_request(*, trigger: str, models: list[str], actor: str, run_id: str,
                  options: Mapping[str, TrainOptions] | None = None,
                  started_at: str | None = None) -> dict[str, Any]:
    """A train request; with `started_at`, one that continues a run the parent began (its
    lock descriptor goes with it)."""
    request = {"job": "train", "trigger": trigger, "models": list(models), "actor": actor,
               "run_id": run_id,
               "options": {n: asdict(o) for n, o in (options or {}).items()}}
    if started_at is not None:
        request["handover"] = {"started_at": started_at}
    return request


def stderr_tail(err: str) -> str:
    """The last lines a worker wrote on stderr, short enough for a record and an alert."""
    lines = [line for line in (err or "").strip().splitlines() if line.strip()]
    tail = " | ".join(lines[-STDERR_TAIL_LINES:]) or "(nothing on stderr)"
    return tail if len(tail) <= STDERR_TAIL_CHARS else "..." + tail[-STDERR_TAIL_CHARS:]


def describe_exit(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def error_from(error: Mapping[str, Any]) -> Exception:
    """The exception a worker's `error` object stands for."""
    kind, message = error.get("kind"), str(error.get("message") or "worker failed")
    run_id = error.get("run_id")
    run_id = str(run_id) if run_id else None
    if kind == "run_in_progress":
        return RunInProgressError(run_id, trigger=error.get("trigger"),
                                  started_at=error.get("started_at"))
    if kind == "invalid":
        return InvalidRequest(message)
    return WorkerError(message, run_id=run_id)


def find_answer(out: str) -> dict[str, Any] | None:
    """The answer line in a worker's stdout, if it wrote one."""
    for line in reversed(out.splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict) and isinstance(answer.get("ok"), bool):
            return answer
    return None


def parse_answer(returncode: int | None, out: str, err: str) -> Any:
    """The result in a finished worker's stdout; raises what its error stands for."""
    answer = find_answer(out)
    if answer is not None:
        if answer["ok"]:
            return answer.get("result")
        error = answer.get("error")
        raise error_from(error if isinstance(error, dict) else {})
    raise WorkerError(f"the worker process {describe_exit(returncode)} without an answer; "
                      f"its last output: {stderr_tail(err)}")


def collect(child: subprocess.Popen[str], *, reap: bool = True) -> Any:
    """Wait for a worker's answer and return its result (or raise its error). A worker
    closes its output once it has answered, before its interpreter winds down (a second,
    with scikit-learn loaded); with `reap=False` this returns then, and the caller waits
    for the process later."""
    out, err = _read_all(child)
    if reap or find_answer(out) is None:
        child.wait()  # without an answer, how it ended is the message
    return parse_answer(child.returncode, out, err)


def _read_all(child: subprocess.Popen[str]) -> tuple[str, str]:
    """Everything on the worker's stdout and stderr, until it closes both."""
    assert child.stdout is not None and child.stderr is not None
    errors: list[str] = []
    stderr = child.stderr
    reader = threading.Thread(target=lambda: errors.append(stderr.read()),
                              name=f"worker-{child.pid}-stderr", daemon=True)
    reader.start()
    with child.stdout:
        out = child.stdout.read()
    reader.join()
    stderr.close()
    return out, "".join(errors)


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

def _read_request() -> tuple[bytes, list[int]]:
    """The request line on stdin and the descriptors that came with it. Stdin is a Unix
    socket when a parent started us; plain text (a pipe, a file) is read as well."""
    fd = os.dup(0)
    try:
        channel = socket.socket(fileno=fd)
    except OSError:  # not a socket
        os.close(fd)
        return sys.stdin.buffer.read(MAX_REQUEST_BYTES), []
    data, fds = b"", []
    with channel:
        if channel.type != socket.SOCK_STREAM or channel.family != socket.AF_UNIX:
            return sys.stdin.buffer.read(MAX_REQUEST_BYTES), []
        while len(data) < MAX_REQUEST_BYTES:
            chunk, more, _flags, _address = socket.recv_fds(channel, 65536, 4)
            fds += more
            if not chunk:
                break
            data += chunk
    return data, fds


def _train(request: Mapping[str, Any], fds: Sequence[int], services: Services | None) -> Any:
    from backend.ml.config import get_settings
    from backend.ml.fleet import specs
    from backend.ml.runs.progress import RunLock
    from backend.ml.runs.runner import Runner
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
        handover = request.get("handover")
        if handover is not None and not (isinstance(handover, dict) and run_id and fds
                                         and isinstance(handover.get("started_at"), str)):
            raise InvalidRequest("a handed-over run needs its run_id, started_at and the "
                                 "training lock's descriptor")
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(str(exc).strip("'\"")) from None
    settings = get_settings()
    runner = Runner(services or Services.from_settings(settings))
    if handover is None:
        return runner.run(trigger=trigger, models=names, actor=actor, run_id=run_id,
                          options=options)
    assert isinstance(run_id, str)
    lock = RunLock.adopt(settings.LOGS_DIR, fds[0], run_id=run_id, trigger=trigger,
                         started_at=str(handover["started_at"]))
    return runner.continue_run(lock, run_id=run_id, trigger=trigger, models=names,
                               actor=actor, options=options,
                               started_at=str(handover["started_at"]))


def _check(stop: threading.Event, services: Services | None) -> Any:
    from backend.ml.config import get_settings
    from backend.ml.monitoring.check import run_check
    from backend.ml.runs.runner import Runner

    return run_check(Runner(services or Services.from_settings(get_settings())), stop=stop)


def _stop_on_sigterm() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends us

    signal.signal(signal.SIGTERM, handler)
    return stop


def handle(request: Any, fds: Sequence[int] = (), services: Services | None = None) -> Any:
    """Run one request in this process (with `services` when given, else ones built from
    the settings); its result (raises InvalidRequest, or what it raised)."""
    if not isinstance(request, dict):
        raise InvalidRequest("a request is a JSON object")
    job = request.get("job")
    if job == "train":
        return _train(request, fds, services)
    if job == "check":
        return _check(_stop_on_sigterm(), services)
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
    # A log line the disk refuses is dropped, not printed: the end of stderr is what the
    # parent records when this process dies, and must show why.
    logging.raiseExceptions = False
    run_id: str | None = None
    try:
        _configure_logging()
        warm_up()
        preload = Preload.start() if AHEAD in sys.argv[1:] else None
        raw, fds = _read_request()
        services = preload.finish() if preload is not None else None
        if not raw.strip():
            return 0  # a spare whose parent went away without a job: nothing to say
        request = json.loads(raw)
        if isinstance(request, dict) and isinstance(request.get("run_id"), str):
            run_id = request["run_id"]
        answer: dict[str, Any] = {"ok": True, "result": handle(request, fds, services)}
    except RunInProgressError as exc:
        answer = {"ok": False, "error": {"kind": "run_in_progress", "message": str(exc),
                                         "run_id": exc.run_id, "trigger": exc.trigger,
                                         "started_at": exc.started_at}}
    except (InvalidRequest, json.JSONDecodeError, UnicodeDecodeError) as exc:
        answer = {"ok": False, "error": {"kind": "invalid", "message": str(exc),
                                         "run_id": run_id}}
    except Exception as exc:
        logger.exception("worker job failed")
        answer = {"ok": False, "error": {"kind": "failed", "message": _message(exc),
                                         "run_id": run_id}}
    with answer_to:
        answer_to.write(json.dumps(answer, default=str) + "\n")
    _close_output()
    return 0


def _close_output() -> None:
    """Point stdout and stderr at /dev/null: the parent, reading both to their end, has
    the whole answer now, while the interpreter winds down."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    finally:
        os.close(devnull)


def _message(exc: BaseException) -> str:
    """The exception's text and its notes (a run adds whether it is on record)."""
    notes = getattr(exc, "__notes__", None) or []
    return "; ".join([str(exc) or type(exc).__name__, *map(str, notes)])


if __name__ == "__main__":
    sys.exit(main())
