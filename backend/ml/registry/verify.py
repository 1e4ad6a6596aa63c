"""Whether the store can be defended: the audit chain and every stored version.

`verify_chain` walks `audit.jsonl` in order and checks each entry's `prev` (the SHA-256 of
the line before it) and `mac` (aliases.py); `verify_store` adds every committed version's
signature and file hash (`ModelStore.verify`). `python -m backend.ml verify` prints their
problems; the service calls `check_audit_chain` at start-up and in the hourly check, which
raises one critical `audit_chain_broken` alert (the alert cooldown dedupes repeats) and
changes nothing: serving goes on from the registry as it is.

The chain cannot show a missing tail; the audit head `registry.json` keeps (aliases.py) can:
the audit must reach it, and its line there must hash as recorded. Deliberately not checked:
both files restored together to an earlier moment, a registry written before the head was
kept (until its next move), and entries of a previous release kept inside `registry.json`,
which are moved into the chain at the next write.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.ml.fleet.specs import MODEL_NAMES
from backend.ml.registry.aliases import (
    AuditHead,
    entry_mac,
    first_prev,
    head_mac,
    line_hash,
    replay,
)
from backend.ml.registry.signing import Signer
from backend.ml.registry.store import ModelStore, StoreError

logger = logging.getLogger(__name__)
ALERT_KIND = "audit_chain_broken"
VERIFY_COMMAND = "python -m backend.ml verify"
Notify = Callable[[str, str, str], object]  # (level, kind, message), as Alerts.notify


@dataclass(frozen=True)
class Problem:
    """One broken thing: where (an audit line, or a model version) and what is wrong."""

    where: str
    message: str

    def line(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Report:
    """What was checked and the problems found, oldest audit line first."""

    problems: list[Problem] = field(default_factory=list)
    entries: int = 0  # audit lines read
    legacy: int = 0  # of them, the unsigned prefix written before the chain
    versions: int = 0  # committed versions checked (0 for the chain alone)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        checked = (f"audit chain of {self.entries} entr{'y' if self.entries == 1 else 'ies'}"
                   + (f" ({self.legacy} unsigned, written before the chain)"
                      if self.legacy else ""))
        if self.versions:
            checked += f" and {self.versions} stored version(s)"
        if self.ok:
            return f"verified the {checked}: all well"
        return (f"{len(self.problems)} problem(s) in the {checked}; the first: "
                f"{self.problems[0].line()}")


def verify_chain(path: Path, signer: Signer, head: AuditHead | None = None, *,
                 previous_key: Signer | None = None) -> Report:
    """Check every line of the audit at `path`, in order, against `signer`'s key (or
    `previous_key`'s, for the lines it signed: a key rotation, rotation.py), and that it reaches
    `head` (read before the audit: an append in between only adds lines).

    A line breaks the chain when it is not a JSON object, when its `prev` is not the hash of
    the line before it (of the genesis seed and the unsigned prefix, for the first chained
    line: an entry before it changed, went, came or moved), when its `mac`
    does not match (it was changed after it was written, or under another key), or when it
    is unsigned but comes after a signed line. A torn last line (a crash mid-append, cut off
    at the next append) is ignored, as readers ignore it; so are blank lines.
    """
    report = Report()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return report
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: empty, or a torn line
    offset, chained, previous = 0, False, b""
    for number, line in enumerate(lines, start=1):
        begins, offset = offset, offset + len(line) + 1
        if not line.strip():
            continue
        report.entries += 1
        where = f"audit.jsonl line {number}"
        try:
            entry: Any = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            report.problems.append(Problem(where, "is not a JSON object (damaged)"))
            previous = line
            continue
        where += f" ({entry.get('model')} {entry.get('action')} at {entry.get('at')})"
        if "prev" not in entry and "mac" not in entry:
            if chained:
                report.problems.append(Problem(where, "is unsigned but follows signed "
                                               "entries: it was inserted"))
            else:
                report.legacy += 1
            previous = line
            continue
        expected = line_hash(previous) if chained else first_prev(data[:begins])
        chained = True
        if entry.get("prev") != expected:
            report.problems.append(Problem(where, "does not follow the line before it (its "
                                           "`prev` differs): an entry before it was changed, "
                                           "removed, inserted or reordered"))
        mac = entry.get("mac")
        key = (previous_key if previous_key and entry.get("key_id") == previous_key.key_id
               else signer)
        if (not isinstance(mac, str) or not mac.isascii()
                or not hmac.compare_digest(mac, entry_mac(key, entry))):
            key_id = entry.get("key_id")
            why = (f"was signed with key {key_id!r}, not the current key {signer.key_id!r}"
                   if key_id != key.key_id else "was changed after it was written")
            report.problems.append(Problem(where, f"its `mac` does not match: the entry {why}"))
        previous = line
    if head is not None:
        report.problems += _head_problems(data, signer, head)
    return report


def _head_problems(data: bytes, signer: Signer, head: AuditHead) -> list[Problem]:
    """Whether the audit `data` reaches the head registry.json records, and the head is the
    signing key holder's."""
    where = "registry.json (audit head)"
    if head.key_id != signer.key_id:
        return [Problem(where, f"was signed with key {head.key_id!r}, not the current key "
                               f"{signer.key_id!r}")]
    if not head.mac.isascii() or not hmac.compare_digest(
            head.mac, head_mac(signer, head.size, head.hash)):
        return [Problem(where, "its `mac` does not match: it was changed after it was written")]
    # Found anywhere, the head's line is there: a shift of its place is an earlier line's
    # edit, which the chain names already.
    whole = data.rfind(b"\n") + 1
    if any(line_hash(line) == head.hash for line in data[:whole].split(b"\n")):
        return []
    if whole < head.size:
        return [Problem("audit.jsonl", f"ends at byte {whole}, short of the {head.size} bytes "
                                       "registry.json records: its newest entries were removed")]
    return [Problem("audit.jsonl", "does not hold the entry registry.json records as its "
                                   "newest: entries were replaced or removed")]


def verify_store(store: ModelStore) -> Report:
    """The audit chain, the registry's production versions against the audit replayed, then
    every committed version of every model (signature, then the model file's SHA-256)."""
    head = store.book.read().audit_head
    report = verify_chain(store.book.audit_path, store.signer, head)
    replayed = replay(store.book.audit())
    for name in MODEL_NAMES:
        # registry.json is not signed: a production alias the audit never moved there is
        # an edit outside the service (or a lost tail of the audit).
        expected = replayed[name].production if name in replayed else None
        actual = store.aliases(name)["production"]
        if actual != expected:
            report.problems.append(Problem(
                f"registry.json ({name})", f"says production is {actual}, but the audit's "
                f"moves end at {expected}"))
    for name in MODEL_NAMES:
        for version in store.committed(name):
            report.versions += 1
            try:
                store.verify(name, version)
            except StoreError as exc:
                report.problems.append(Problem(f"{name} {version}", str(exc)))
    return report


def check_audit_chain(store: ModelStore, on_alert: Notify) -> Report | None:
    """The service's check: one critical alert when the chain is broken, naming the first
    broken entry; serving is left alone. None when the chain cannot be read at all (no key,
    unreadable file): logged, as the store's own errors will say it again."""
    try:
        head = store.book.read().audit_head
        report = verify_chain(store.book.audit_path, store.signer, head)
    except (OSError, StoreError) as exc:
        logger.error("cannot check the audit chain %s: %s", store.book.audit_path, exc)
        return None
    if not report.ok:
        on_alert("critical", ALERT_KIND,
                 f"{report.summary()}. Serving goes on; run `{VERIFY_COMMAND}` for every "
                 f"problem")
    return report
