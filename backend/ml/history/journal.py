"""`History`: the training history's mutations and queries over its main file and year
archives.

The main file is a `StateFile` of a `HistoryDocument`: every mutation holds
`training_history.lock`, reads, changes, spills overflow into the year archives and replaces
the file atomically; readers take no lock and reuse the last parsed document while the bytes
are unchanged. Readers get copies, never the shared document.

Damage is recovered the way every state file's is: a main file that is not JSON or not the
document's shape is moved aside (`.corrupt-<UTC time>`) and rebuilt (`recovery`), and a main
file missing while year archives exist is rebuilt the same way. Each recovery, and each
damaged year archive moved aside, is reported once through `on_recover`, after the lock is
released, so the report may itself write to this history.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, overload
from uuid import uuid4

from backend.ml.history import stats
from backend.ml.history.archive import YearArchives
from backend.ml.history.document import (
    DEFAULT_LIMITS,
    STATUSES,
    ArchiveTotals,
    HistoryDocument,
    HistoryPermissionError,
    HistoryWriteError,
    Record,
    at_or_after,
    clone,
    empty_document,
    models_in,
    parse_timestamp,
    utc_now_iso,
)
from backend.ml.history.recovery import (
    MissingFileRecovery,
    OnRecover,
    Rebuild,
    describe_rebuilt,
    rebuild_document,
)
from backend.ml.statefile import Recovery, StateFile

logger = logging.getLogger(__name__)
T = TypeVar("T")


class _Unchanged(Exception):
    """Leaves a `StateFile.update()` block without writing."""


class History:
    """The training history at `path`; safe to use from several threads and processes."""

    def __init__(self, path: Path, *, limits: Mapping[str, int] | int | None = None,
                 rebuild: Rebuild | None = None, lock_timeout: float = 60.0,
                 on_recover: OnRecover | None = None) -> None:
        self.path = Path(path)
        if isinstance(limits, int):
            limits = dict.fromkeys(DEFAULT_LIMITS, limits)
        unknown = set(limits or {}) - set(DEFAULT_LIMITS)
        if unknown:
            raise ValueError(f"unknown history limits {sorted(unknown)}")
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        if min(self.limits.values()) < 1:
            raise ValueError(f"history limits must be >= 1: {self.limits}")
        self.rebuild = rebuild
        self.lock_timeout = lock_timeout
        self.lock_path = self.path.with_suffix(".lock")
        self.archives = YearArchives(self.path)
        self._state = StateFile(
            self.path, HistoryDocument, empty=empty_document, rebuild=self._rebuilt,
            rebuilt_description=describe_rebuilt, on_recover=on_recover,
            lock_path=self.lock_path, lock_timeout=lock_timeout, indent=None)

    @property
    def recoveries(self) -> list[Recovery]:
        """Every recovery this object reported: main file and year archives."""
        return list(self._state.recoveries)

    @property
    def recovered_from(self) -> Path | None:
        """Where this object last moved a damaged main file (None if it never did)."""
        moved = [r.moved_to for r in self._state.recoveries
                 if r.path == self.path and r.moved_to not in (None, self.path)]
        return moved[-1] if moved else None

    # ---- mutations -------------------------------------------------------------------------

    def append_training(self, record: Mapping[str, Any]) -> Record:
        """Add a run (normally with status "running"); fills `run_id` and `timestamp`."""
        entry = self._stamped(record)
        entry.setdefault("run_id", f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid4().hex[:8]}")
        entry.setdefault("status", "running")
        self._check_status(entry)

        def change(doc: HistoryDocument) -> Record:
            if any(t.get("run_id") == entry["run_id"] for t in doc.trainings):
                raise ValueError(f"training run {entry['run_id']} is already recorded")
            doc.trainings.append(entry)
            return entry

        return clone(self._mutate(change))

    def update_training(self, run_id: str, **fields: Any) -> Record:
        """Change fields of a recorded run (e.g. status running -> success); KeyError if none."""
        if fields.get("run_id", run_id) != run_id:
            raise ValueError("a training's run_id cannot be changed")
        self._check_status(fields)
        new = clone(fields)

        def change(doc: HistoryDocument) -> Record:
            for entry in reversed(doc.trainings):
                if entry.get("run_id") == run_id:
                    entry.update(new)
                    return entry
            raise KeyError(f"no training run {run_id!r} in {self.path}")

        return clone(self._mutate(change))

    def append_check(self, record: Mapping[str, Any]) -> Record:
        """Add a performance check (fills `timestamp`)."""
        return self._append(record, lambda doc: doc.checks)

    def append_alert(self, record: Mapping[str, Any]) -> Record:
        """Add an alert; fills `id` and `timestamp` when missing."""
        return self._append({"id": uuid4().hex, **record}, lambda doc: doc.alerts)

    def add_model_version(self, name: str, entry: Mapping[str, Any]) -> Record:
        """Record a new version of model `name` (fills `timestamp`)."""
        return self._append(entry, lambda doc: doc.model_versions.setdefault(name, []))

    def extend(self, *, trainings: Iterable[Mapping[str, Any]] = (),
               checks: Iterable[Mapping[str, Any]] = (),
               alerts: Iterable[Mapping[str, Any]] = (),
               model_versions: Mapping[str, Iterable[Mapping[str, Any]]] | None = None) -> None:
        """Append many entries (oldest first) in one locked write: imports and bulk loads."""
        new_trainings = [self._stamped(r) for r in trainings]
        for entry in new_trainings:
            self._check_status(entry)
        new_checks = [self._stamped(r) for r in checks]
        new_alerts = [{"id": uuid4().hex, **self._stamped(r)} for r in alerts]
        new_versions = {name: [self._stamped(v) for v in entries]
                        for name, entries in (model_versions or {}).items()}

        def change(doc: HistoryDocument) -> None:
            known = {t.get("run_id") for t in doc.trainings} - {None}
            for entry in new_trainings:
                if entry.get("run_id") is not None and entry["run_id"] in known:
                    raise ValueError(f"training run {entry['run_id']} is already recorded")
                known.add(entry.get("run_id"))
            doc.trainings += new_trainings
            doc.checks += new_checks
            doc.alerts += new_alerts
            for name, entries in new_versions.items():
                doc.model_versions.setdefault(name, []).extend(entries)

        self._mutate(change)

    def mark_interrupted(self, is_running: Callable[[str], bool]) -> list[str]:
        """Runs recorded as "running" whose run is gone become "interrupted"; their ids.

        `is_running(run_id)` is called with the history lock held: it must not write the
        history. When it raises, that run is left as it is."""
        marked: list[str] = []

        def change(doc: HistoryDocument) -> bool:
            now = utc_now_iso()
            for entry in doc.trainings:
                run_id = str(entry.get("run_id"))
                if entry.get("status") != "running":
                    continue
                try:
                    alive = is_running(run_id)
                except Exception:
                    logger.exception("cannot tell whether run %s is running; left as is", run_id)
                    continue
                if not alive:
                    entry.update(status="interrupted", interrupted_at=now,
                                 note="interrupted: its process stopped before the run finished")
                    marked.append(run_id)
            return bool(marked)

        self._mutate(change, write_if=lambda changed: changed)
        for run_id in marked:
            logger.warning("training run %s was left running by a stopped process: "
                           "marked interrupted", run_id)
        return marked

    # ---- readers ---------------------------------------------------------------------------

    def trainings(self, limit: int = 50, offset: int = 0, *,
                  status: str | Collection[str] | None = None, model: str | None = None,
                  since: str | datetime | None = None, archived: bool = False) -> list[Record]:
        """Training runs newest first, filtered; `archived=True` pages on into the archives."""
        statuses = {status} if isinstance(status, str) else set(status) if status else None
        moment = self._since(since)

        def keep(entry: Record) -> bool:
            return ((statuses is None or entry.get("status") in statuses)
                    and (model is None or model in models_in(entry))
                    and (moment is None or at_or_after(entry, moment)))

        return self._page("trainings", keep, limit, offset, archived, moment)

    def get_training(self, run_id: str, *, archived: bool = True) -> Record | None:
        """A run by id: the main file, then the archives' run-id index (no scan)."""
        for entry in reversed(self._load().trainings):
            if entry.get("run_id") == run_id:
                return clone(entry)
        found = self.archives.find_training(run_id) if archived else None
        return clone(found) if found is not None else None

    def checks(self, limit: int = 50, offset: int = 0, *, model: str | None = None,
               since: str | datetime | None = None, archived: bool = False) -> list[Record]:
        moment = self._since(since)

        def keep(entry: Record) -> bool:
            return ((model is None or model in models_in(entry))
                    and (moment is None or at_or_after(entry, moment)))

        return self._page("checks", keep, limit, offset, archived, moment)

    def alerts(self, limit: int = 50, offset: int = 0, *, since: str | datetime | None = None,
               archived: bool = False) -> list[Record]:
        moment = self._since(since)
        return self._page("alerts", lambda e: moment is None or at_or_after(e, moment),
                          limit, offset, archived, moment)

    @overload
    def model_versions(self, name: str) -> list[Record]: ...

    @overload
    def model_versions(self, name: None = None) -> dict[str, list[Record]]: ...

    def model_versions(self, name: str | None = None) -> Any:
        """Versions recorded in the main file, oldest first: a list for `name`, else a dict."""
        versions = self._load().model_versions
        return clone(versions.get(name, []) if name is not None else versions)

    def stats(self) -> Record:
        """The guide's stats over every run ever recorded (archives included), plus
        `by_status`, `running_trainings` and a per-model trend of the latest scores."""
        return stats.summary(self._load())

    def metrics_totals(self) -> Record:
        """All-time counts for monitoring, archives included, so they never go down when
        entries are archived: finished runs `by_status`, `durations` ({whole seconds rounded
        up: runs}) and `duration_sum` of those with a duration, `retrains_by_model`, and
        `alerts_by_kind`."""
        return stats.metrics_totals(self._load())

    def archived_years(self) -> list[int]:
        return self.archives.years()

    def archive_path(self, year: int) -> Path:
        return self.archives.path(year)

    def archive(self, year: int) -> Record:
        """One year's archive (the same shape, without totals; empty when there is none)."""
        part = self.archives.read(year)
        return part.model_dump(mode="json") if part is not None else {
            "trainings": [], "checks": [], "model_versions": {}, "alerts": []}

    # ---- internals -------------------------------------------------------------------------

    def _append(self, record: Mapping[str, Any],
                where: Callable[[HistoryDocument], list[Record]]) -> Record:
        entry = self._stamped(record)

        def change(doc: HistoryDocument) -> Record:
            where(doc).append(entry)
            return entry

        return clone(self._mutate(change))

    @staticmethod
    def _stamped(record: Mapping[str, Any]) -> Record:
        entry = clone(dict(record))
        entry.setdefault("timestamp", utc_now_iso())
        return entry

    @staticmethod
    def _check_status(record: Mapping[str, Any]) -> None:
        if "status" in record and record["status"] not in STATUSES:
            raise ValueError(f"training status {record['status']!r} is not one of {STATUSES}")

    @staticmethod
    def _since(since: str | datetime | None) -> datetime | None:
        if since is None:
            return None
        moment = parse_timestamp(since)
        if moment is None:
            raise ValueError(f"since={since!r} is not an ISO timestamp")
        return moment

    def _page(self, kind: str, keep: Callable[[Record], bool], limit: int, offset: int,
              archived: bool, since: datetime | None) -> list[Record]:
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        page: list[Record] = []
        for entry in self._newest_first(kind, archived, since):
            if len(page) >= limit:
                break
            if keep(entry):
                if offset:
                    offset -= 1
                else:
                    page.append(entry)
        return clone(page)

    def _newest_first(self, kind: str, archived: bool, since: datetime | None) -> Iterator[Record]:
        yield from reversed(self._load().entries(kind))
        if archived:
            for year in reversed(self.archives.years()):
                if since is not None and year < since.astimezone(UTC).year - 1:
                    break  # a year file may hold entries up to a day into the next UTC year
                yield from reversed(self.archives.entries(year, kind))

    def _load(self) -> HistoryDocument:
        """The current document for reading (shared: callers must not change it)."""
        doc = self._state.read()
        if self._may_be_lost(doc):
            # Settled under the lock: rebuilt if still missing, else read as written.
            self._mutate(lambda _: None, write_if=lambda _: False)
            doc = self._state.read()
        return doc

    def _may_be_lost(self, doc: HistoryDocument) -> bool:
        """Whether `doc` may stand for a main file that is missing, or that another process
        is recovering (between moving the damaged file aside and writing its replacement
        the file is not there, and reads as empty)."""
        if (doc.trainings or doc.checks or doc.alerts or doc.model_versions
                or doc.archive != ArchiveTotals()):
            return False
        # A history never written (no lock file, no year archives) is simply empty.
        return self.lock_path.exists() or bool(self.archives.years())

    def _mutate(self, change: Callable[[HistoryDocument], T],
                write_if: Callable[[T], bool] = lambda _: True) -> T:
        """Under the lock: read (recovering a damaged or missing file), change, spill the
        overflow into the year archives, write."""
        outcome: list[T] = []
        try:
            with self._state.update() as doc:
                rebuilt = self._rebuild_if_missing(doc)
                outcome.append(change(doc))
                if not (rebuilt or write_if(outcome[0])):
                    raise _Unchanged
                for recovery in self.archives.spill(doc, self.limits):
                    self._state.report_later(recovery)
        except _Unchanged:
            pass
        except HistoryWriteError:
            raise
        except OSError as exc:
            kind = HistoryPermissionError if isinstance(exc, PermissionError) else HistoryWriteError
            raise kind(exc.errno, f"cannot write the training history {self.path}: {exc}") from exc
        return outcome[0]

    def _rebuild_if_missing(self, doc: HistoryDocument) -> bool:
        """(Lock held.) A main file missing while year archives exist lost their totals:
        rebuild it into `doc` as a damaged one would be."""
        if self.path.exists() or not self.archives.years():
            return False
        rebuilt = self._rebuilt()
        for name in HistoryDocument.model_fields:
            setattr(doc, name, getattr(rebuilt, name))
        recovery = MissingFileRecovery(self.path, self.path, "year archives exist",
                                       describe_rebuilt(rebuilt))
        logger.critical("%s", recovery.message())
        self._state.report_later(recovery)
        return True

    def _rebuilt(self) -> HistoryDocument:
        """(Lock held.) The document replacing a lost main file; any overflow is spilled by
        the next change."""
        return rebuild_document(self.archives, self.rebuild)
