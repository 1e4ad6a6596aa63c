"""Which version of each model serves: the aliases in `registry.json` and the audit of
every move in `audit.jsonl`, both under MODELS_DIR.

    registry.json  {"models": {name: {"production", "previous", "last_version"}}}
    audit.jsonl    one alias move per line, oldest first, append-only

The registry is a `StateFile`: validated, locked read-modify-write, atomic, and recovered
like every state file. What survives its loss rebuilds it: replaying the audit gives each
model's production and previous versions, and the version files give the highest number
ever issued. The audit is appended (and fsynced) before the registry is replaced, so a
crash in between leaves an audit line for a move that did not land, never a move without
its line; a torn last line (a crash mid-append) is skipped when read.

A registry written by the previous release kept the audit inside it (`"audit": [...]`);
it is read as is and moved into `audit.jsonl` at the next write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.ml.fsio import FILE_MODE, ensure_dir
from backend.ml.statefile import Recovery, StateFile

logger = logging.getLogger(__name__)
Action = Literal["promote", "rollback", "restore", "ab_promote"]
Actor = Literal["scheduler", "cli", "api"]
ACTIONS: tuple[str, ...] = ("promote", "rollback", "restore", "ab_promote")
ACTORS: tuple[str, ...] = ("scheduler", "cli", "api")
VERSION_RE = re.compile(r"^v(\d{4,})$")


class AliasMove(BaseModel):
    """One change of a model's production alias, as the audit keeps it."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    at: str
    model: str
    from_: str | None = Field(default=None, alias="from")
    to: str
    action: str
    reason: str = ""
    actor: str = ""

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class ModelAliases(BaseModel):
    model_config = ConfigDict(extra="ignore")

    production: str | None = None
    previous: str | None = None
    last_version: int = 0


class Registry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    models: dict[str, ModelAliases] = Field(default_factory=dict)
    # Only in files of the previous release; moved into audit.jsonl at the next write.
    audit: list[AliasMove] = Field(default_factory=list)


def version_number(version: str | None) -> int:
    """The number of a version id (v0003 is 3); 0 for none, since numbers start at 1."""
    match = VERSION_RE.match(version or "")
    return int(match.group(1)) if match else 0


def replay(moves: Iterable[AliasMove], versioning: bool = True) -> dict[str, ModelAliases]:
    """Each model's aliases after the moves, in order."""
    models: dict[str, ModelAliases] = {}
    for move in moves:
        slot = models.setdefault(move.model, ModelAliases())
        if slot.production != move.to:
            slot.previous = slot.production if versioning else None
            slot.production = move.to
    return models


class AliasBook:
    """The aliases and their audit for the store at `models_dir`.

    `numbers(name)` gives the version numbers present on disk, which the rebuild needs and
    only the store knows how to list.
    """

    def __init__(self, models_dir: Path, *, numbers: Callable[[str], list[int]],
                 model_names: Callable[[], Iterable[str]], versioning: bool = True,
                 on_recover: Callable[[Recovery], None] | None = None,
                 lock_timeout: float = 60.0) -> None:
        self.models_dir = Path(models_dir)
        self.audit_path = self.models_dir / "audit.jsonl"
        self.versioning = versioning
        self._numbers = numbers
        self._model_names = model_names
        self.file = StateFile(self.models_dir / "registry.json", Registry, empty=Registry,
                              rebuild=self._rebuild, rebuilt_description=self._describe,
                              on_recover=on_recover, lock_path=self.models_dir / ".registry.lock",
                              lock_timeout=lock_timeout)

    @property
    def path(self) -> Path:
        return self.file.path

    def read(self) -> Registry:
        return self.file.read()

    def aliases(self, name: str) -> ModelAliases:
        return self.read().models.get(name) or ModelAliases()

    @contextlib.contextmanager
    def update(self) -> Iterator[Registry]:
        """The registry under its lock; moves recorded with `record` land in the audit first."""
        with self.file.update() as registry:
            if registry.audit:  # a file of the previous release: its audit moves out now
                if not self.audit_path.exists():
                    self._append(registry.audit)
                registry.audit = []
            yield registry

    def record(self, moves: list[AliasMove]) -> None:
        """Append moves to the audit (call inside `update`, before the registry is written)."""
        self._append(moves)

    def audit(self) -> list[AliasMove]:
        """Every alias move, oldest first."""
        return [*self.read().audit, *self._logged_moves()]

    def _logged_moves(self) -> list[AliasMove]:
        """The moves in audit.jsonl (a torn or damaged line is skipped)."""
        try:
            lines = self.audit_path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        moves = []
        for line in lines:
            with contextlib.suppress(ValueError):
                moves.append(AliasMove.model_validate_json(line))
        return moves

    def _append(self, moves: Iterable[AliasMove]) -> None:
        payload = b"".join(json.dumps(m.as_dict()).encode("utf-8") + b"\n" for m in moves)
        if not payload:
            return
        ensure_dir(self.models_dir)
        fd = os.open(self.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rebuild(self) -> Registry:
        """(Lock held.) The registry as the audit and the version files tell it (a legacy
        audit inside the damaged file is lost with it)."""
        registry = Registry(models=replay(self._logged_moves(), self.versioning))
        for name in self._model_names():
            numbers = self._numbers(name)
            if numbers:
                slot = registry.models.setdefault(name, ModelAliases())
                slot.last_version = max(numbers)
        return registry

    @staticmethod
    def _describe(registry: Registry) -> str:
        serving = {n: m.production for n, m in sorted(registry.models.items()) if m.production}
        return (f"production of {len(serving)} model(s) from the audit: "
                + (", ".join(f"{n} {v}" for n, v in serving.items()) or "none"))


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
