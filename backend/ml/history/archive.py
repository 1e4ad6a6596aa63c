"""The year archives next to the main history file: spilling over-limit entries into them,
reading them back, and recounting their totals.

When a list of the main file grows past its limit, its oldest entries (down to 80% of the
limit, so the archives are rewritten once per many appends, not on every one) move to
`training_history.YYYY.json` by the year of their timestamp: same shape, nothing dropped.
A training still "running" is never archived, so it can always be updated.

Archives are written under the main file's lock, before the main file: a crash in between
leaves entries in both, and the next spill notices the overlap instead of writing them twice.
A year file that is damaged when it is about to be written is moved aside like any damaged
state file and a new one is started; a damaged one met by a reader is skipped and logged.

Readers share what they parse: the list a reader pages through (trainings, checks or alerts)
is parsed alone, once per identity of its file (path, inode, size, modification time), and
kept in a small cache bounded by lists and by entries, so paging into the archives does not
parse years of history on every request (a year's 365 trainings parse in about 0.1 s and
hold about 7 MiB; its 8,760 checks are most of the file and are parsed only when asked
for). A run id is found through an index of each year's run ids (built once per identity),
so an unknown id costs a stat per year, not a parse. Archives are only ever replaced whole
(atomic rename), which gives a new identity; what the cache hands out is shared, and
callers copy before changing anything.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.ml import fsio
from backend.ml.history.document import (
    LISTS,
    ArchiveTotals,
    HistoryDocument,
    Record,
    YearArchive,
    version_key,
    year_of,
)
from backend.ml.history.stats import accumulate, count_kinds
from backend.ml.statefile import Recovery, describe_damage, move_aside

logger = logging.getLogger(__name__)
# Kept parsed: about 7 years of trainings (~7 MiB a year), never a year of 8,760 checks.
CACHED_LISTS = 8
CACHED_ENTRIES = 3_000
INDEXED_YEARS = 64
Identity = tuple[str, int, int, int, int]  # path, device, inode, size, mtime_ns


# One list of a year file, the rest of it skipped: reading a year's trainings does not build
# its thousands of checks.
class ArchivedTrainings(BaseModel):
    model_config = ConfigDict(strict=True)
    trainings: list[Record] = Field(default_factory=list)


class ArchivedChecks(BaseModel):
    model_config = ConfigDict(strict=True)
    checks: list[Record] = Field(default_factory=list)


class ArchivedAlerts(BaseModel):
    model_config = ConfigDict(strict=True)
    alerts: list[Record] = Field(default_factory=list)


LIST_MODELS: dict[str, type[BaseModel]] = {
    "trainings": ArchivedTrainings, "checks": ArchivedChecks, "alerts": ArchivedAlerts}
assert set(LIST_MODELS) == set(LISTS)


def identity(path: Path, stat: os.stat_result) -> Identity:
    return str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


@dataclass
class CacheStats:
    """How often a list of a year file was reused (hits) or read and parsed (misses)."""

    hits: int = 0
    misses: int = 0


class ParsedYears:
    """Lists of year files by (identity, kind), least recently used dropped past `max_lists`
    lists or `max_entries` entries (a longer list is parsed and not kept); and the run-id
    index of up to `max_indexes` files. A damaged file is remembered as None, so it is
    logged once per identity rather than on every request. Thread-safe."""

    def __init__(self, *, max_lists: int = CACHED_LISTS, max_entries: int = CACHED_ENTRIES,
                 max_indexes: int = INDEXED_YEARS) -> None:
        self.max_lists, self.max_entries, self.max_indexes = max_lists, max_entries, max_indexes
        self._lists: OrderedDict[tuple[Identity, str], list[Record] | None] = OrderedDict()
        self._run_ids: OrderedDict[Identity, dict[str, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def entries(self, path: Path, kind: str) -> tuple[Identity | None, list[Record] | None]:
        """The file's identity and its list `kind` (None: no file, or damaged)."""
        model = LIST_MODELS[kind]
        try:
            key = identity(path, path.stat())
        except FileNotFoundError:
            return None, None
        with self._lock:
            if (key, kind) in self._lists:
                self._lists.move_to_end((key, kind))
                self.stats.hits += 1
                return key, self._lists[(key, kind)]
        try:
            with path.open("rb") as file:  # the identity of what is read, not of what was
                key = identity(path, os.fstat(file.fileno()))  # stat'ed
                raw = file.read()
        except FileNotFoundError:
            return None, None
        try:
            found: list[Record] | None = getattr(model.model_validate_json(raw), kind)
        except (ValueError, ValidationError) as exc:
            logger.error("history archive %s is unreadable (%s); skipped", path,
                         describe_damage(raw, exc))
            found = None
        with self._lock:
            self.stats.misses += 1
            if len(found or ()) <= self.max_entries:
                self._lists[(key, kind)] = found
                while (len(self._lists) > self.max_lists
                       or sum(map(len, filter(None, self._lists.values()))) > self.max_entries):
                    self._lists.popitem(last=False)
        return key, found

    def run_ids(self, path: Path) -> tuple[Identity | None, dict[str, int]]:
        """The file's identity and {run id: position in its `trainings`} (empty: no file, or
        damaged)."""
        try:
            key = identity(path, path.stat())
        except FileNotFoundError:
            return None, {}
        with self._lock:
            index = self._run_ids.get(key)
            if index is not None:
                self._run_ids.move_to_end(key)
                return key, index
        read_key, trainings = self.entries(path, "trainings")
        index = {e["run_id"]: i for i, e in enumerate(trainings or [])
                 if isinstance(e.get("run_id"), str)}
        if read_key is not None:
            with self._lock:
                self._run_ids[read_key] = index
                while len(self._run_ids) > self.max_indexes:
                    self._run_ids.popitem(last=False)
        return read_key, index


def parse_year(path: Path, raw: bytes) -> YearArchive | None:
    try:
        return YearArchive.model_validate_json(raw)
    except (ValueError, ValidationError) as exc:
        logger.error("history archive %s is unreadable (%s); skipped", path,
                     describe_damage(raw, exc))
        return None


@dataclass
class Recount:
    """Totals recounted from the year files, and what they already hold."""

    totals: ArchiveTotals = field(default_factory=ArchiveTotals)
    run_ids: set[str] = field(default_factory=set)
    versions: set[tuple[str, str]] = field(default_factory=set)  # (model, version_key)
    years: int = 0


class YearArchives:
    """The year files of the history whose main file is `main`."""

    def __init__(self, main: Path) -> None:
        self.main = main
        self.parsed = ParsedYears()

    def years(self) -> list[int]:
        pattern = f"{self.main.stem}.[0-9][0-9][0-9][0-9]{self.main.suffix}"
        return sorted(int(p.name[len(self.main.stem) + 1:][:4])
                      for p in self.main.parent.glob(pattern))

    def path(self, year: int) -> Path:
        return self.main.with_name(f"{self.main.stem}.{year:04d}{self.main.suffix}")

    def read(self, year: int) -> YearArchive | None:
        """One year's entries, parsed anew; None when there is no file or it is damaged
        (logged)."""
        path = self.path(year)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        return parse_year(path, raw)

    def entries(self, year: int, kind: str) -> list[Record]:
        """One list ("trainings", "checks" or "alerts") of a year, oldest first (shared: do
        not change it); empty when there is no file or it is damaged (logged once)."""
        return self.parsed.entries(self.path(year), kind)[1] or []

    def find_training(self, run_id: str) -> Record | None:
        """The archived run `run_id` (shared: do not change it), newest year first."""
        for year in reversed(self.years()):
            path = self.path(year)
            key, index = self.parsed.run_ids(path)
            if run_id not in index:
                continue
            found, trainings = self.parsed.entries(path, "trainings")
            if found == key and trainings is not None:
                return trainings[index[run_id]]
            for entry in reversed(trainings or []):
                if entry.get("run_id") == run_id:  # replaced in between: look it up
                    return entry
        return None

    # ---- writing (the main file's lock held) --------------------------------------------------

    def spill(self, doc: HistoryDocument, limits: Mapping[str, int]) -> list[Recovery]:
        """Move the oldest entries of every list of `doc` over its limit into the year files
        and add them to `doc`'s archive totals; the damaged year files this moved aside."""
        moved: dict[int, YearArchive] = {}

        def part(entry: Record) -> YearArchive:
            return moved.setdefault(year_of(entry), YearArchive())

        totals = doc.archive
        for entry in spill_oldest(doc.trainings, limits["trainings"]):
            part(entry).trainings.append(entry)
            accumulate(totals.trainings, entry)
        evicted = spill_oldest(doc.checks, limits["checks"])
        totals.checks += len(evicted)
        for entry in evicted:
            part(entry).checks.append(entry)
        evicted = spill_oldest(doc.alerts, limits["alerts"])
        totals.alerts += len(evicted)
        count_kinds(totals.alerts_by_kind, evicted)
        for entry in evicted:
            part(entry).alerts.append(entry)
        for name, entries in doc.model_versions.items():
            evicted = spill_oldest(entries, limits["model_versions"])
            totals.model_versions += len(evicted)
            for entry in evicted:
                part(entry).model_versions.setdefault(name, []).append(entry)
        recoveries = [self._append(year, entries) for year, entries in sorted(moved.items())]
        return [recovery for recovery in recoveries if recovery is not None]

    def _append(self, year: int, part: YearArchive) -> Recovery | None:
        path = self.path(year)
        existing, recovery = self._read_for_writing(path, part)
        for kind in LISTS:
            setattr(existing, kind, overlap_merge(existing.entries(kind), part.entries(kind)))
        for name, entries in part.model_versions.items():
            old = existing.model_versions.get(name, [])
            existing.model_versions[name] = overlap_merge(old, entries)
        payload = json.dumps(existing.model_dump(mode="json")).encode("utf-8")
        fsio.atomic_write_bytes(path, payload)
        return recovery

    def _read_for_writing(self, path: Path,
                          part: YearArchive) -> tuple[YearArchive, Recovery | None]:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return YearArchive(), None
        try:
            return YearArchive.model_validate_json(raw), None
        except (ValueError, ValidationError) as exc:
            reason = describe_damage(raw, exc)
        aside = move_aside(path)
        archived = len(part.trainings) + len(part.checks) + len(part.alerts) + sum(
            map(len, part.model_versions.values()))
        # The archive totals in the main file still count what the damaged file held: they
        # were added when those entries were archived and are not taken back.
        recovery = Recovery(path, aside, reason,
                            f"a new year archive holding the {archived} entries archived now "
                            "(the history's all-time totals still count the old file's)")
        logger.critical("%s", recovery.message())
        return YearArchive(), recovery

    # ---- recounting (after the main file was lost) --------------------------------------------

    def recount(self) -> Recount:
        """Archive totals as the year files have them, and the runs and versions in them."""
        found = Recount()
        for year in self.years():
            part = self.read(year)
            if part is None:
                continue
            found.years += 1
            for entry in part.trainings:
                accumulate(found.totals.trainings, entry)
                found.run_ids.add(str(entry.get("run_id")))
            found.totals.checks += len(part.checks)
            found.totals.alerts += len(part.alerts)
            count_kinds(found.totals.alerts_by_kind, part.alerts)
            for name, entries in part.model_versions.items():
                found.totals.model_versions += len(entries)
                found.versions.update((name, version_key(v)) for v in entries)
        return found


def spill_oldest(entries: list[Record], limit: int) -> list[Record]:
    """Remove and return the oldest entries past `limit`, down to 80% of it (never a run
    still "running": it must stay where `update_training` finds it)."""
    if len(entries) <= limit:
        return []
    excess = len(entries) - (limit - limit // 5)
    keep: list[Record] = []
    evicted: list[Record] = []
    for entry in entries:
        if len(evicted) < excess and entry.get("status") != "running":
            evicted.append(entry)
        else:
            keep.append(entry)
    entries[:] = keep
    return evicted


def overlap_merge(old: list[Record], new: list[Record]) -> list[Record]:
    """`old + new` without the prefix of `new` that is already the tail of `old` (left by a
    crash between writing an archive and the main file)."""
    if new:
        for k in range(min(len(old), len(new)), 0, -1):
            if old[-k] == new[0] and old[-k:] == new[:k]:
                return old + new[k:]
    return old + new
