"""The service's log: `LOGS_DIR/training_scheduler.log` and the console.

Several processes write the file at once (uvicorn workers, the scheduler, training and
check children), so none of them rotates it: a process renaming the file under the others
loses their lines or writes into the renamed one. Each process appends (O_APPEND: whole
lines, never interleaved mid-line) through a `WatchedFileHandler`, which reopens the file
when it was moved away, and rotation is left to logrotate (the README has the snippet).

Handlers go on the `backend` logger, so the ML core (`backend.ml.*`) and the HTTP edge
(`backend.app`) log to both; uvicorn keeps its own loggers. One record is one line: both
handlers escape control characters in the line (a newline is written as `\\n`, ESC as
`\\x1b`), so text from a request (a rollback reason, a run id) can neither start
a forged line nor drive a terminal. Only the traceback of a logged exception, which follows
its line, keeps its own lines.

Configuring twice (a second app in one process, a test) replaces this module's handlers
rather than adding more, so a line is never written twice; handlers that others added are
left alone.
"""

from __future__ import annotations

import logging
import re
import sys
from logging.handlers import WatchedFileHandler
from pathlib import Path

from backend.ml.fsio import ensure_dir

LOG_FILE_NAME = "training_scheduler.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
_MARK = "_ml_scheduler_handler"
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """`text` on one line, every control character written as an escape."""
    return CONTROL.sub(lambda m: NAMED.get(m.group(), m.group().encode(
        "unicode_escape").decode("ascii")), text)


class OneLineFormatter(logging.Formatter):
    """A formatter whose line (time, level, logger, thread, message) has no control
    characters; the traceback and stack of `exc_info`/`stack_info` follow it unchanged."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record comes (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(logs_dir: Path, *, level: int = logging.INFO,
                      console: bool = True) -> Path:
    """Log `backend.*` to the file under `logs_dir` (created when missing) and to the
    console; the log file's path."""
    path = ensure_dir(Path(logs_dir)) / LOG_FILE_NAME
    logger = logging.getLogger("backend")
    ours = [h for h in logger.handlers if getattr(h, _MARK, False)]
    if any(isinstance(h, WatchedFileHandler) and Path(h.baseFilename) == path.resolve()
           for h in ours) and len(ours) == 1 + console:
        logger.setLevel(level)
        return path
    for handler in ours:
        logger.removeHandler(handler)
        handler.close()
    formatter = OneLineFormatter(FORMAT)
    file_handler = WatchedFileHandler(path, encoding="utf-8")
    handlers: list[logging.Handler] = [file_handler]
    if console:
        handlers.append(ConsoleHandler())
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _MARK, True)
        logger.addHandler(handler)
    logger.setLevel(level)
    return path
