"""Crash-safe file writes and cross-process locks: the one place either is done.

A write goes to a temporary file in the same folder, is fsynced, then `os.replace`d over
the target, and the folder is fsynced: a crash at any instant leaves the old file or
the new one, whole. Files are created readable by owner and group only (0640): model
files are pickles and the history names the plant's business.

Locks are `fcntl.flock` on a lock file. The kernel drops a lock when its holder dies,
so a killed process never leaves a lock behind; the holder's pid and purpose are
written into the lock file so a refused caller can say who holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

FILE_MODE = 0o640
DIR_MODE = 0o750
HOLDER_MAX_CHARS = 200  # "pid=123 run_id=... daily" fits; garbage is cut short


class LockTimeout(Exception):
    """A lock was not free within the time given; `holder` says who has it."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by {holder or 'another process'}")
        self.path = path
        self.holder = holder


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(path: Path, payload: bytes, mode: int, place: Callable[[str], bool]) -> bool:
    """Write `payload` to a fsynced temporary file beside `path`, then `place(tmp)` it at
    `path`; the temporary file never outlives the call. `place`'s answer is returned."""
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        placed = place(tmp)
    except OSError as exc:
        if exc.filename is None:  # a write or fsync: say where
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if placed:
        fsync_dir(path.parent)
    return placed


def atomic_write_bytes(path: Path, payload: bytes, *, mode: int = FILE_MODE) -> None:
    """Replace `path` with `payload` so that readers see the old or the new bytes, never a mix."""

    def replace(tmp: str) -> bool:
        os.replace(tmp, path)
        return True

    _publish(path, payload, mode, replace)


def create_exclusive(path: Path, payload: bytes, *, mode: int = FILE_MODE) -> bool:
    """Create `path` holding `payload`, whole, unless it exists: True if this call created
    it. Two processes racing to create it end with one file, the first one's."""

    def link(tmp: str) -> bool:
        try:
            os.link(tmp, path)  # unlike a rename, a link never replaces an existing file
        except FileExistsError:
            return False
        return True

    return _publish(path, payload, mode, link)


def atomic_write_json(path: Path, obj: Any, *, indent: int | None = 2) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=indent, default=str).encode("utf-8"))


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _read_holder(handle: Any) -> str:
    """The holder text in a lock file, printable only: whatever bytes a crash or a hand left
    there, a caller gets a short string, never an exception."""
    with contextlib.suppress(OSError, ValueError):
        handle.seek(0)
        text = str(handle.read(HOLDER_MAX_CHARS))
        return "".join(c if c.isprintable() else "?" for c in text).strip()
    return ""


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float = 60.0, purpose: str = "") -> Iterator[None]:
    """Hold an exclusive cross-process lock on `path` (waits up to `timeout` seconds).

    `timeout=0` tries once. Raises `LockTimeout` naming the holder when it cannot lock.
    """
    ensure_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    handle = os.fdopen(fd, "a+", encoding="utf-8", errors="replace")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise LockTimeout(path, _read_holder(handle)) from None
                time.sleep(0.05)
        handle.seek(0)
        handle.truncate()
        holder = f"pid={os.getpid()} {purpose}".strip().encode("utf-8", errors="replace")
        # Unbuffered, and only a courtesy to a refused caller: on a full disk the lock is
        # held without it, so the write that needs the space is the one that fails.
        with contextlib.suppress(OSError):
            os.write(handle.fileno(), holder)
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


def lock_holder(path: Path) -> str | None:
    """Who holds the lock on `path` right now, or None when it is free."""
    if not path.exists():
        return None
    with open(path, "a+", encoding="utf-8", errors="replace") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(handle) or "another process"
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return None


# A write the system refused: the disk (or quota) is full, or the place is not writable.
# The operator must act; the CLI says so in one line (exit 2) and the API answers 503.
REFUSED_WRITES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS,
                            errno.EACCES, errno.EPERM})


def causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what led to it (causes, contexts, a database driver's original error)."""
    found: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        orig = getattr(current, "orig", None)
        todo += [current.__cause__, current.__context__,
                 orig if isinstance(orig, BaseException) else None]
    return found


def refused_write(exc: BaseException) -> OSError | None:
    """The write the system refused behind `exc`, the one naming its file if any."""
    refused = [e for e in causes(exc) if isinstance(e, OSError) and e.errno in REFUSED_WRITES]
    return next((e for e in refused if e.filename), refused[0] if refused else None)

