"""Whether a training run is going, and how far it has got: the one answer every reader uses.

A run holds `LOGS_DIR/training.lock` (a kernel lock, dropped if its process dies) with
`run_id=<id> <trigger>` written into it, and keeps `LOGS_DIR/training_progress.json` (a
`RunProgress`) up to date from the instant after it took the lock until it ends. The lock
is the truth about *whether* a run is going; the progress file only says how far a run has
got, and counts only when it names the lock holder's run (a crash leaves a stale one).

This module is light on purpose (pydantic and the standard library): the API, the health
function and /metrics ask it on every request without importing any ML library.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from backend.ml.fsio import LockTimeout, lock_holder
from backend.ml.history.document import TRIGGERS
from backend.ml.statefile import Recovery, StateFile

logger = logging.getLogger(__name__)
LOCK_FILE = "training.lock"
PROGRESS_FILE = "training_progress.json"
# A reader must never hang on a writer: the runner holds this lock for one small write.
READ_LOCK_TIMEOUT = 2.0


class RunInProgressError(Exception):
    """Another run holds the training lock."""

    def __init__(self, run_id: str | None) -> None:
        super().__init__(f"training run {run_id or '(unknown)'} is already running")
        self.run_id = run_id


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
                       started_at=_lock_time(lock_path), total=0, done=0, in_flight=[],
                       finished=[], models=[])


class ProgressWriter:
    """The running run's side: writes its progress as models finish. Progress is a courtesy,
    never a reason for a run to fail, so a write that cannot happen is logged and skipped."""

    def __init__(self, logs_dir: Path, *,
                 on_recover: Callable[[Recovery], None] | None = None) -> None:
        self.file = progress_file(logs_dir, on_recover=on_recover, lock_timeout=5.0)
        self.progress: RunProgress | None = None

    def begin(self, run_id: str, trigger: str, models: Sequence[str]) -> None:
        self.progress = RunProgress(
            run_id=run_id, trigger=trigger, started_at=datetime.now(UTC).isoformat(),
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
