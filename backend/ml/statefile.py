"""JSON state files: the one way every one of them is read, changed and recovered.

The registry, the training history, the monitor's state, the alert cooldown and the run
progress are each a `StateFile` over a pydantic model:

- reading parses and validates the bytes against the model; a process keeps the last
  parsed value and reuses it while the bytes are unchanged, so readers take no lock;
- `update()` holds the file's cross-process lock around read, change and an atomic
  write, so two processes never lose each other's change;
- a file that is not JSON or not the model's shape (truncated, emptied, binary garbage,
  the wrong shape) is recovered the same way everywhere: under the lock it is moved aside
  as `<name>.corrupt-<UTC time>` (never emptied), a new value is rebuilt from what survives
  (`rebuild`, else the empty value), written, logged as critical, and reported once
  through `on_recover` (the service wires that to its one alert path). The caller gets the
  rebuilt value and keeps serving.

`on_recover` runs after the lock is released, since reporting may write other state
files (or, for the history, this one).

Deliberately not done here: deciding what a rebuild contains (each owner knows what
survives: the registry its version files, the monitor nothing) and retrying a failed
write (a full disk is the caller's error to report).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from backend.ml.fsio import atomic_write_bytes, file_lock

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Recovery:
    """A damaged state file was moved aside and rebuilt."""

    path: Path
    moved_to: Path | None  # None: the file was missing, nothing to keep
    reason: str
    rebuilt: str  # what the new file holds, for people

    def message(self) -> str:
        kept = f"moved aside to {self.moved_to}" if self.moved_to else "nothing to keep"
        return (f"state file {self.path.name} was unreadable ({self.reason}); {kept}; "
                f"rebuilt: {self.rebuilt}")


def move_aside(path: Path, *, keep_original: bool = False) -> Path:
    """Rename `path` to `<name>.corrupt-<UTC time>` (a free name); the new path. With
    `keep_original` the damaged bytes get the new name as a hard link and stay at `path`
    too, so that readers never find the file missing until it is replaced atomically."""
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    aside, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    if keep_original:
        os.link(path, aside)
    else:
        os.rename(path, aside)
    return aside


def describe_damage(raw: bytes, exc: Exception) -> str:
    """One line on why `raw` is not a valid state file."""
    if not raw.strip():
        return "empty"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not text (binary garbage)"
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return f"not JSON ({first['msg'].removeprefix('Invalid JSON: ')})"
        where = ".".join(map(str, first["loc"])) or "top level"
        return f"wrong shape at {where}: {first['msg']}"
    return f"not JSON ({exc})"


class StateFile(Generic[M]):
    """One JSON file holding a `schema` value; safe to share between threads and processes.

    `empty` makes the value of a missing file. `rebuild(reason)` makes the value that
    replaces a damaged one (default: `empty`). `migrate` turns what an older release wrote
    into the current shape before validation.
    """

    def __init__(self, path: Path, schema: type[M], *, empty: Callable[[], M],
                 rebuild: Callable[[], M] | None = None,
                 rebuilt_description: Callable[[M], str] | None = None,
                 migrate: Callable[[Any], Any] | None = None,
                 on_recover: Callable[[Recovery], None] | None = None,
                 lock_path: Path | None = None, lock_timeout: float = 60.0,
                 indent: int | None = 2) -> None:
        self.path = Path(path)
        self.schema = schema
        self.empty = empty
        self.rebuild = rebuild
        self.rebuilt_description = rebuilt_description
        self.migrate = migrate
        self.on_recover = on_recover
        self.lock_path = lock_path or self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = lock_timeout
        self.indent = indent
        self._cache: tuple[bytes, M] | None = None
        self._guard = threading.Lock()  # our threads queue here, not in the file lock's poll
        self.recoveries: list[Recovery] = []  # every recovery reported by this object
        self._deferred: list[Recovery] = []
        self._deferred_guard = threading.Lock()

    # ---- reading --------------------------------------------------------------------------

    def read(self) -> M:
        """The current value (shared with other readers: do not change it). A damaged file
        is recovered first."""
        try:
            return self._parse(self._raw())
        except (ValueError, ValidationError):
            return self._settle()

    def exists(self) -> bool:
        return self.path.exists()

    # ---- writing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def update(self) -> Iterator[M]:
        """Hold the lock, yield the current value (a private copy) to change in place, then
        write it atomically. An exception inside the block writes nothing."""
        recovered: Recovery | None = None
        try:
            with self._guard, file_lock(self.lock_path, timeout=self.lock_timeout,
                                        purpose=f"update {self.path.name}"):
                raw = self._raw()
                try:
                    value = self._parse(raw).model_copy(deep=True)
                except (ValueError, ValidationError) as exc:
                    assert raw is not None  # a missing file parses as empty
                    value, recovered = self._recover(raw, exc)
                    value = value.model_copy(deep=True)
                yield value
                self._write(value)
        finally:
            if recovered is not None:  # recovered and written, even if the change failed
                self.report(recovered)
            self._flush_deferred()

    def write(self, value: M) -> None:
        """Replace the value (under the lock)."""
        with self._guard, file_lock(self.lock_path, timeout=self.lock_timeout,
                                    purpose=f"write {self.path.name}"):
            self._write(value)

    def delete(self) -> None:
        with self._guard, file_lock(self.lock_path, timeout=self.lock_timeout,
                                    purpose=f"delete {self.path.name}"):
            self.path.unlink(missing_ok=True)
            self._cache = None

    # ---- internals -------------------------------------------------------------------------

    def _raw(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def _parse(self, raw: bytes | None) -> M:
        if raw is None:
            return self.empty()
        cached = self._cache
        if cached is not None and cached[0] == raw:
            return cached[1]
        if self.migrate is None:
            value = self.schema.model_validate_json(raw)
        else:
            value = self.schema.model_validate(self.migrate(json.loads(raw)))
        self._cache = (raw, value)
        return value

    def _settle(self) -> M:
        """Under the lock: the value, recovering the file if it is still damaged (another
        process may have recovered it while we waited)."""
        recovered: Recovery | None = None
        with self._guard, file_lock(self.lock_path, timeout=self.lock_timeout,
                                    purpose=f"recover {self.path.name}"):
            raw = self._raw()
            try:
                value = self._parse(raw)
            except (ValueError, ValidationError) as exc:
                assert raw is not None
                value, recovered = self._recover(raw, exc)
        if recovered is not None:
            self.report(recovered)
        self._flush_deferred()
        return value

    def _write(self, value: M) -> None:
        payload = value.model_dump_json(by_alias=True, indent=self.indent).encode("utf-8")
        atomic_write_bytes(self.path, payload)
        self._cache = (payload, value.model_copy(deep=True))

    def _recover(self, raw: bytes, exc: Exception) -> tuple[M, Recovery]:
        """(Lock held.) Keep the damaged bytes aside, make the value that replaces them and
        write it. A rebuild that fails for any reason but the disk starts empty; an OSError
        (the disk) stops the recovery with the damaged file still in place."""
        reason = describe_damage(raw, exc)
        aside = move_aside(self.path, keep_original=True)
        value: M
        try:
            value = self.rebuild() if self.rebuild is not None else self.empty()
        except OSError:
            raise
        except Exception:
            logger.exception("rebuilding %s failed; starting it empty", self.path)
            value = self.empty()
        rebuilt = (self.rebuilt_description(value) if self.rebuilt_description is not None
                   else "started empty")
        recovery = Recovery(self.path, aside, reason, rebuilt)
        logger.critical("%s", recovery.message())
        self._write(value)
        return value, recovery

    def report_later(self, recovery: Recovery) -> None:
        """Report a recovery the owner made of a file of its own (a history's year archive)
        once this file's lock is released: the report may write to this very file."""
        with self._deferred_guard:
            self._deferred.append(recovery)

    def _flush_deferred(self) -> None:
        with self._deferred_guard:
            pending, self._deferred = self._deferred, []
        for recovery in pending:
            self.report(recovery)

    def report(self, recovery: Recovery) -> None:
        """Record `recovery` and hand it to `on_recover` (a failing report is logged)."""
        self.recoveries.append(recovery)
        if self.on_recover is None:
            return
        try:
            self.on_recover(recovery)
        except Exception:  # reporting must never undo a recovery that already happened
            logger.exception("reporting the recovery of %s failed", self.path)
