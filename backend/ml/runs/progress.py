"""Whether a training run is going, and how far it has got: the one answer every reader uses.

A run holds `LOGS_DIR/training.lock` (a kernel lock, dropped if its process dies) with
`pid=<pid> run_id=<id> <trigger> started=<ISO time>` written into it, and keeps
`LOGS_DIR/training_progress.json` (a `RunProgress`) up to date from the instant after it
took the lock until it ends. The lock is the truth about *whether* a run is going; the
progress file only says how far a run has got, and counts only when it names the lock
holder's run (a crash leaves a stale one). `RunLock` is that lock, in a form that one
process can take and hand to the worker process that runs the run.

This module is light on purpose (pydantic and the standard library): the API, the health
function and /metrics ask it on every request without importing any ML library.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from backend.ml.fsio import FILE_MODE, LockTimeout, ensure_dir, lock_holder
from backend.ml.history.document import TRIGGERS
from backend.ml.statefile import Recovery, StateFile

logger = logging.getLogger(__name__)
LOCK_FILE = "training.lock"
PROGRESS_FILE = "training_progress.json"
# A reader must never hang on a writer: the runner holds this lock for one small write.
READ_LOCK_TIMEOUT = 2.0
# How long a refused run waits for the holder's name, written just after its lock.
HOLDER_WAIT_SECONDS = 0.05


class RunInProgressError(Exception):
    """Another run holds the training lock; names it, and when known its trigger and start."""

    def __init__(self, run_id: str | None, *, trigger: str | None = None,
                 started_at: str | None = None) -> None:
        about = ", ".join(filter(None, [trigger, started_at and f"started {started_at}"]))
        super().__init__(f"training run {run_id or '(unknown)'} is already running"
                         f"{f' ({about})' if about else ''}")
        self.run_id = run_id
        self.trigger = trigger or None
        self.started_at = started_at or None


class RunProgress(BaseModel):
    """How far the running run has got. `models` is every model of the run; `in_flight`
    those not finished yet (submitted to the pool; not necessarily fitting right now)."""

    run_id: str
    trigger: str
    started_at: str = ""  # unknown in a file that does not say
    total: int
    done: int
    in_flight: list[str]
    finished: list[str]
    models: list[str]


def _nothing() -> RunProgress:
    """The value of a missing progress file: names no run, so it never matches a holder."""
    return RunProgress(run_id="", trigger="", started_at="", total=0, done=0, in_flight=[],
                       finished=[], models=[])


def _migrate(raw: Any) -> Any:
    """The previous release wrote no `models` (and may have left a file behind in a crash):
    its models are the ones in flight and finished, so it is not "damaged"."""
    if isinstance(raw, dict) and "models" not in raw:
        return {**raw, "models": [*raw.get("in_flight", []), *raw.get("finished", [])]}
    return raw


def progress_file(logs_dir: Path, *, on_recover: Callable[[Recovery], None] | None = None,
                  lock_timeout: float = 60.0) -> StateFile[RunProgress]:
    return StateFile(Path(logs_dir) / PROGRESS_FILE, RunProgress, empty=_nothing,
                     migrate=_migrate, on_recover=on_recover, lock_timeout=lock_timeout,
                     indent=None,
                     rebuilt_description=lambda _: "no progress until the run's next model "
                                                   "finishes")


def holder_run_id(holder: str | None) -> str | None:
    """The run id in a training lock's holder text (`pid=1 run_id=run-x daily`), if any."""
    for part in (holder or "").split():
        if part.startswith("run_id="):
            return part.removeprefix("run_id=") or None
    return None


def _holder_trigger(holder: str) -> str:
    return next((part for part in holder.split() if part in TRIGGERS), "")


def _holder_started(holder: str) -> str:
    """When the holder's run started (`started=<ISO time>` in its text), or ""."""
    return next((part.removeprefix("started=") for part in holder.split()
                 if part.startswith("started=")), "")


def _lock_time(lock_path: Path) -> str:
    """When the holder took the lock (it writes its name then), as an ISO time; "" if
    unknown."""
    with contextlib.suppress(OSError, ValueError, OverflowError):
        return datetime.fromtimestamp(lock_path.stat().st_mtime, UTC).isoformat()
    return ""


def current_run(logs_dir: Path, *,
                on_recover: Callable[[Recovery], None] | None = None) -> RunProgress | None:
    """The running run's progress, from any process; None when no process holds the lock.

    In the instant between taking the lock and writing its progress (or when the progress
    file is stale or unreadable) the answer is built from the lock holder's text: its run id
    and trigger, no model lists. `run_id` is "" while the holder has not written its name.
    Never raises on garbage in either file; a damaged progress file is recovered (moved
    aside) and reported through `on_recover`.
    """
    lock_path = Path(logs_dir) / LOCK_FILE
    try:
        holder = lock_holder(lock_path)
    except (OSError, ValueError):
        logger.warning("cannot read the training lock %s", lock_path, exc_info=True)
        return None
    if holder is None:
        return None
    run_id = holder_run_id(holder) or ""
    try:
        progress = progress_file(logs_dir, on_recover=on_recover,
                                 lock_timeout=READ_LOCK_TIMEOUT).read()
        if run_id and progress.run_id == run_id:
            return progress.model_copy(deep=True)
    except (OSError, ValueError, LockTimeout):
        logger.warning("cannot read the run progress in %s", logs_dir, exc_info=True)
    return RunProgress(run_id=run_id, trigger=_holder_trigger(holder),
                       started_at=_holder_started(holder) or _lock_time(lock_path),
                       total=0, done=0, in_flight=[], finished=[], models=[])


def running_error(logs_dir: Path, holder: str | None = None, *,
                  on_recover: Callable[[Recovery], None] | None = None) -> RunInProgressError:
    """The refusal naming the run that holds the lock: its id, trigger and start, from the
    lock holder's text (a few system calls, nothing that waits), else from its progress."""
    text = holder or ""
    run_id, started = holder_run_id(text), _holder_started(text)
    if run_id and started:
        return RunInProgressError(run_id, trigger=_holder_trigger(text), started_at=started)
    progress = current_run(logs_dir, on_recover=on_recover)
    if progress is not None and progress.run_id:
        return RunInProgressError(progress.run_id, trigger=progress.trigger,
                                  started_at=progress.started_at)
    return RunInProgressError(run_id, trigger=_holder_trigger(text))


def _named_holder(lock_path: Path) -> str | None:
    """The holder text once it names its run: a holder writes it right after taking the
    lock, so a refusal in between looks again for up to HOLDER_WAIT_SECONDS."""
    deadline = time.monotonic() + HOLDER_WAIT_SECONDS
    while True:
        holder = lock_holder(lock_path)
        if holder is None or holder_run_id(holder) or time.monotonic() > deadline:
            return holder
        time.sleep(0.001)


class RunLock:
    """The training lock, held through a descriptor that can be handed to another process.

    A `flock` lock belongs to the open file, not to a process: every process holding a
    descriptor of it (inherited, or received over a Unix socket) holds the lock, and it is
    free once all of them have closed it or one unlocks it. So the process that starts a
    run takes the lock (a second starter is refused at once, before any worker exists),
    hands the descriptor to the worker, and keeps its own copy until it has seen the worker
    end and recorded how the run ended; then `release()`. If the starter dies first, the
    worker's exit frees the lock; if both die, the kernel does. The holder text is written
    as `fsio.file_lock` writes it, so every reader (`current_run`, `lock_holder`) reads
    both the same way.
    """

    def __init__(self, path: Path, fd: int, *, run_id: str, trigger: str,
                 started_at: str) -> None:
        self.path = path
        self._fd: int | None = fd
        self.run_id, self.trigger, self.started_at = run_id, trigger, started_at

    def __del__(self) -> None:
        # Dropped without release (a request cancelled before it handed the lock on): our
        # descriptor goes, and with it the lock unless a worker holds it too.
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    @classmethod
    def take(cls, logs_dir: Path, *, run_id: str, trigger: str,
             on_recover: Callable[[Recovery], None] | None = None) -> RunLock:
        """The lock, held by this process for run `run_id`, started now; RunInProgressError
        naming the running run when another holds it. Either way in a few system calls, so
        an event loop may call it: only a refusal in the instant between another run's
        lock and its name waits for the name (HOLDER_WAIT_SECONDS at most)."""
        path = ensure_dir(Path(logs_dir)) / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise running_error(logs_dir, _named_holder(path),
                                on_recover=on_recover) from None
        lock = cls(path, fd, run_id=run_id, trigger=trigger,
                   started_at=datetime.now(UTC).isoformat())
        lock.name(os.getpid())
        return lock

    @classmethod
    def adopt(cls, logs_dir: Path, fd: int, *, run_id: str, trigger: str,
              started_at: str) -> RunLock:
        """The lock handed to this process as `fd`: checked to be `LOGS_DIR/training.lock`
        and held through it (RunInProgressError when another run holds the file instead)."""
        path = Path(logs_dir) / LOCK_FILE
        os.set_inheritable(fd, False)  # ours alone: the pool workers we start must not hold it
        mine, there = os.fstat(fd), os.stat(path)
        if (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino):
            os.close(fd)
            raise ValueError(f"the descriptor handed over for run {run_id} is not {path}")
        try:  # a no-op when this open file holds the lock, as it should
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise running_error(logs_dir, lock_holder(path)) from None
        return cls(path, fd, run_id=run_id, trigger=trigger, started_at=started_at)

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path} is released")
        return self._fd

    def name(self, pid: int) -> None:
        """Write who holds the lock: `pid=<pid> run_id=<id> <trigger> started=<ISO time>`.
        A courtesy for readers: on a full disk it is skipped (a reader then sees "another
        process" and no run id), never a reason to fail."""
        text = (f"pid={pid} run_id={self.run_id} {self.trigger} "
                f"started={self.started_at}").encode()
        try:
            os.ftruncate(self.fileno(), 0)
            os.pwrite(self.fileno(), text, 0)
        except OSError as exc:
            logger.warning("cannot write the holder of %s: %s", self.path, exc)

    def release(self) -> None:
        """Let go: the holder text is cleared and the lock freed for every process holding
        this open file. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class ProgressWriter:
    """The running run's side: writes its progress as models finish. Progress is a courtesy,
    never a reason for a run to fail, so a write that cannot happen is logged and skipped."""

    def __init__(self, logs_dir: Path, *,
                 on_recover: Callable[[Recovery], None] | None = None) -> None:
        self.file = progress_file(logs_dir, on_recover=on_recover, lock_timeout=5.0)
        self.progress: RunProgress | None = None

    def begin(self, run_id: str, trigger: str, models: Sequence[str], *,
              started_at: str | None = None) -> None:
        """The run's first progress; `started_at` (default now) when it started earlier,
        in the process that handed it over."""
        self.progress = RunProgress(
            run_id=run_id, trigger=trigger,
            started_at=started_at or datetime.now(UTC).isoformat(),
            total=len(models), done=0, in_flight=list(models), finished=[],
            models=list(models))
        self._write()

    def finished(self, name: str) -> RunProgress:
        assert self.progress is not None, "begin() first"
        progress = self.progress
        progress.done += 1
        progress.in_flight = [n for n in progress.in_flight if n != name]
        progress.finished = [*progress.finished, name]
        self._write()
        return progress

    def end(self) -> None:
        self.progress = None
        try:
            self.file.delete()
        except (OSError, LockTimeout):
            logger.warning("cannot remove the run progress %s", self.file.path, exc_info=True)

    def _write(self) -> None:
        assert self.progress is not None
        try:
            self.file.write(self.progress)
        except (OSError, LockTimeout):
            logger.warning("cannot write the run progress %s", self.file.path, exc_info=True)
