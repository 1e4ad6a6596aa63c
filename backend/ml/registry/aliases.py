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
it is read as is and moved into `audit.jsonl` at the next write (chained then, as below).

The audit is a hash chain. Each line appended carries `prev`, `key_id` and `mac`: `prev`
is the SHA-256 (hex) of the line before it, and for the first chained line the SHA-256 of
GENESIS_SEED followed by every byte before that line (nothing in a new file); `mac` is an
HMAC-SHA256 under the model signing key over "audit-entry\0" and the entry's canonical JSON
without `mac` (sorted keys, no spaces; the prefix keeps an entry's MAC from ever passing
for a version's signature). Editing, removing, inserting or reordering any line breaks the
MAC of that line or the `prev` of the next; `verify.py` checks it. Lines written by the
release before the chain (no `prev`, no `mac`) are its unsigned prefix: accepted only
before the first chained line, whose `prev` covers all of them, so they cannot be edited
later without breaking the chain either. Dropping the newest lines is not seen by the chain
alone, so `registry.json` keeps the audit's head: the length of its whole lines and the hash
of the last one, under an HMAC ("audit-head\0") of the same key, written under the lock
with every append. The audit may run past the head (a crash between the append and the
registry's write), never stop short of it. Deliberately not seen: both files put back
together to an earlier moment, which is what a restore looks like. A torn last line is cut
off (under the lock) before the next append, so it cannot swallow the next entry.
Readers strip the chain fields: a move is a move.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.ml.fsio import FILE_MODE, atomic_write_bytes, ensure_dir
from backend.ml.statefile import Recovery, StateFile

if TYPE_CHECKING:
    from backend.ml.registry.signing import Signer

logger = logging.getLogger(__name__)
Action = Literal["promote", "rollback", "restore", "ab_promote"]
Actor = Literal["scheduler", "cli", "api"]
ACTIONS: tuple[str, ...] = ("promote", "rollback", "restore", "ab_promote")
ACTORS: tuple[str, ...] = ("scheduler", "cli", "api")
VERSION_RE = re.compile(r"^v(\d{4,})$")
GENESIS_SEED = b"backend.ml audit.jsonl genesis\n"
GENESIS = hashlib.sha256(GENESIS_SEED).hexdigest()  # prev of line 1 of a new audit
CHAIN_FIELDS = ("prev", "key_id", "mac")
TAIL_BYTES = 65536  # read from the end of the audit to find its last line


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


class AuditHead(BaseModel):
    """Where the audit ended after the last append: `size` bytes of whole lines, the last
    of them hashing to `hash`; `mac` (head_mac) proves the signing key's holder wrote it."""

    model_config = ConfigDict(extra="ignore")

    size: int
    hash: str
    key_id: str
    mac: str


class Registry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    models: dict[str, ModelAliases] = Field(default_factory=dict)
    # None in a file written before the head was kept, and until the first move.
    audit_head: AuditHead | None = None
    # Only in files of the previous release; moved into audit.jsonl at the next write.
    audit: list[AliasMove] = Field(default_factory=list)


def version_number(version: str | None) -> int:
    """The number of a version id (v0003 is 3); 0 for none, since numbers start at 1."""
    match = VERSION_RE.match(version or "")
    return int(match.group(1)) if match else 0


def line_hash(line: bytes) -> str:
    """What the next entry's `prev` holds: the SHA-256 of a line (without its newline)."""
    return hashlib.sha256(line).hexdigest()


def first_prev(prefix: bytes) -> str:
    """The `prev` of the first chained line: covers the genesis seed and every byte before
    it (the unsigned lines of the release before the chain, if any)."""
    return hashlib.sha256(GENESIS_SEED + prefix).hexdigest()


def is_chained(line: bytes) -> bool:
    """Whether a line is a chained entry (it has `prev` or `mac`)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and ("prev" in entry or "mac" in entry)


def entry_mac(signer: Signer, entry: Mapping[str, Any]) -> str:
    """The HMAC of an audit entry: over its canonical JSON without `mac`."""
    body = {k: v for k, v in entry.items() if k != "mac"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(signer.key, b"audit-entry\0" + text.encode("ascii"),
                    hashlib.sha256).hexdigest()


def head_mac(signer: Signer, size: int, last_hash: str) -> str:
    """The HMAC of an audit head (its own prefix: never valid as an entry's or a version's)."""
    return hmac.new(signer.key, f"audit-head\0{size}\0{last_hash}".encode("ascii"),
                    hashlib.sha256).hexdigest()


def parse_time(text: object) -> datetime | None:
    """An entry's `at` as an aware datetime (UTC when it names no zone); None if not a time."""
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def serving_at(moves: Iterable[AliasMove], name: str, at: datetime) -> AliasMove | None:
    """The move that made a model's production version the one serving at `at` (moves at
    or before it, in the audit's order); None before its first promotion."""
    found = None
    for move in moves:
        if move.model != name:
            continue
        moment = parse_time(move.at)
        if moment is not None and moment <= at:
            found = move
    return found


def replay(moves: Iterable[AliasMove], versioning: bool = True) -> dict[str, ModelAliases]:
    """Each model's aliases after the moves, in order."""
    models: dict[str, ModelAliases] = {}
    for move in moves:
        slot = models.setdefault(move.model, ModelAliases())
        if slot.production != move.to:
            slot.previous = slot.production if versioning else None
            slot.production = move.to
    return models


def _parse_moves(data: bytes) -> list[AliasMove]:
    """The moves in audit lines, chain fields stripped; a damaged line is skipped."""
    moves = []
    for line in data.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                for key in CHAIN_FIELDS:
                    entry.pop(key, None)
            moves.append(AliasMove.model_validate(entry))
    return moves


@dataclass(frozen=True)
class _ParsedAudit:
    """audit.jsonl as last parsed: its stat key, the length and SHA-256 of its whole lines,
    their moves, and the moves of a torn last line (normally none)."""

    key: tuple[int, int, int, int]
    size: int
    digest: bytes
    moves: list[AliasMove]
    torn_tail: list[AliasMove]


class AliasBook:
    """The aliases and their audit for the store at `models_dir`.

    `numbers(name)` gives the version numbers present on disk, which the rebuild needs and
    only the store knows how to list.
    """

    def __init__(self, models_dir: Path, *, numbers: Callable[[str], list[int]],
                 model_names: Callable[[], Iterable[str]], signer: Callable[[], Signer],
                 versioning: bool = True,
                 on_recover: Callable[[Recovery], None] | None = None,
                 lock_timeout: float = 60.0) -> None:
        self.models_dir = Path(models_dir)
        self.audit_path = self.models_dir / "audit.jsonl"
        self.versioning = versioning
        self._numbers = numbers
        self._model_names = model_names
        self._signer = signer
        self._parsed: _ParsedAudit | None = None
        self._head: AuditHead | None = None  # set by an append inside `update`
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
            self._head = None
            if registry.audit:  # a file of the previous release: its audit moves out now
                if not self.audit_path.exists():
                    self._append(registry.audit)
                registry.audit = []
            yield registry
            if self._head is not None:
                registry.audit_head, self._head = self._head, None

    def record(self, moves: list[AliasMove]) -> None:
        """Append moves to the audit (call inside `update`, before the registry is written)."""
        self._append(moves)

    def audit(self) -> list[AliasMove]:
        """Every alias move, oldest first."""
        return [*self.read().audit, *self._logged_moves()]

    def _logged_moves(self) -> list[AliasMove]:
        """The moves in audit.jsonl (a torn or damaged line is skipped).

        Ten years of nightly moves are some 64,000 lines, too many to parse for every `at=`
        lookup, so the parsed whole lines are kept while the file's identity, size and
        mtime stay the same. The file only grows: when it has, and the bytes read before
        are unchanged (their SHA-256), only the new lines are parsed. Anything else parses
        it all again. `verify` reads the file itself, never this cache."""
        try:
            stat = self.audit_path.stat()
        except FileNotFoundError:
            return []
        key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = self._parsed
        if cached is not None and cached.key == key:
            return [*cached.moves, *cached.torn_tail]
        try:
            data = self.audit_path.read_bytes()
        except FileNotFoundError:
            return []
        whole = data.rfind(b"\n") + 1  # a torn last line is parsed each time, not kept
        moves: list[AliasMove] = []
        start = 0
        if (cached is not None and cached.size <= whole
                and hashlib.sha256(data[:cached.size]).digest() == cached.digest):
            moves, start = list(cached.moves), cached.size
        moves += _parse_moves(data[start:whole])
        tail = _parse_moves(data[whole:])
        self._parsed = _ParsedAudit((stat.st_dev, stat.st_ino, len(data), stat.st_mtime_ns),
                                    whole, hashlib.sha256(data[:whole]).digest(), moves, tail)
        return [*moves, *tail]

    def replace_audit(self, payload: bytes, signer: Signer) -> None:
        """(Inside `update`.) Replace the audit with `payload`, whole chained lines signed
        by `signer` (a key rotation: rotation.py), atomically, and record its head."""
        atomic_write_bytes(self.audit_path, payload)
        last = line_hash(payload[:-1].rsplit(b"\n", 1)[-1])
        self._head = AuditHead(size=len(payload), hash=last, key_id=signer.key_id,
                               mac=head_mac(signer, len(payload), last))

    def _append(self, moves: Iterable[AliasMove]) -> None:
        """(Lock held.) Append moves as chained, signed lines and fsync them."""
        todo = list(moves)
        if not todo:
            return
        signer = self._signer()
        ensure_dir(self.models_dir)
        fd = os.open(self.audit_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            prev = self._prev(fd)
            lines = []
            for move in todo:
                entry = {**move.as_dict(), "prev": prev, "key_id": signer.key_id}
                entry["mac"] = entry_mac(signer, entry)
                line = json.dumps(entry).encode("utf-8")
                lines.append(line + b"\n")
                prev = line_hash(line)
            os.write(fd, b"".join(lines))
            os.fsync(fd)
            size = os.fstat(fd).st_size
            self._head = AuditHead(size=size, hash=prev, key_id=signer.key_id,
                                   mac=head_mac(signer, size, prev))
        finally:
            os.close(fd)

    def _prev(self, fd: int) -> str:
        """(Lock held.) The `prev` of the next line appended; a torn last line (a crash
        mid-append) is cut off first."""
        size = os.fstat(fd).st_size
        start = max(0, size - TAIL_BYTES)
        data = os.pread(fd, size - start, start)
        if start and data.count(b"\n") < 2:  # the last line may begin before the chunk
            start, data = 0, os.pread(fd, size, 0)
        end = data.rfind(b"\n") + 1
        if end < len(data):
            logger.warning("%s ends with a torn line (%d bytes, a crash mid-append): cut off "
                           "before the next entry", self.audit_path, len(data) - end)
            os.ftruncate(fd, start + end)
        last = next((line for line in reversed(data[:end].split(b"\n")) if line.strip()),
                    None)
        if last is not None and is_chained(last):
            return line_hash(last)
        return first_prev(os.pread(fd, start + end, 0) if start else data[:end])

    def _rebuild(self) -> Registry:
        """(Lock held.) The registry as the audit and the version files tell it (a legacy
        audit inside the damaged file is lost with it)."""
        registry = Registry(models=replay(self._logged_moves(), self.versioning))
        # The head is left unset: the audit as found is all there is to trust now.
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
