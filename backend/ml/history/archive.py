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
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

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

    def years(self) -> list[int]:
        pattern = f"{self.main.stem}.[0-9][0-9][0-9][0-9]{self.main.suffix}"
        return sorted(int(p.name[len(self.main.stem) + 1:][:4])
                      for p in self.main.parent.glob(pattern))

    def path(self, year: int) -> Path:
        return self.main.with_name(f"{self.main.stem}.{year:04d}{self.main.suffix}")

    def read(self, year: int) -> YearArchive | None:
        """One year's entries; None when there is no file or it is damaged (logged)."""
        path = self.path(year)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return YearArchive.model_validate_json(raw)
        except (ValueError, ValidationError) as exc:
            logger.error("history archive %s is unreadable (%s); skipped", path,
                         describe_damage(raw, exc))
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
