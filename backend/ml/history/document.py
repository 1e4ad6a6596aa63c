"""The JSON training history: runs, checks, model versions and alerts, bounded by archiving.

The main file (normally `LOGS_DIR/training_history.json`) has the guide's shape plus checks,
alerts and the running totals of what has been archived:

    {"trainings": [...], "checks": [...], "model_versions": {name: [...]}, "alerts": [...],
     "archive": {"trainings": {count, successful, ...}, "checks": n, "alerts": n,
                 "alerts_by_kind": {kind: n}, "model_versions": n}}

The training totals also hold what all-time metrics need (`durations`, `duration_sum`,
`retrains_by_model`); a file written before a totals key existed loads with it empty, so
entries archived back then are counted in `count`/`by_status`/`alerts` but not in those
breakdowns.

Every list is kept oldest first. When one grows past its limit, its oldest entries (down to
80% of the limit, so the archives are rewritten once per many appends, not on every one)
move to `training_history.YYYY.json` by the year of their timestamp: same shape, nothing
dropped. A training still "running" is never archived, so it can always be updated.

Every mutation holds `training_history.lock`, reads, changes and replaces the file
atomically (archives first, then the main file: a crash in between leaves entries in both,
and the next archiving notices the overlap instead of writing them twice). Readers take no
lock; a process keeps the last parsed file and reuses it while the bytes are unchanged.

A file that is not JSON or not this shape is renamed aside (`.corrupt-<UTC time>`, never
emptied), a new history is rebuilt from the `rebuild` callback if given, and a critical
alert says where the old file went (`History.recovered_from`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, overload
from uuid import uuid4

from backend.ml.fsio import atomic_write_json, file_lock, read_json

logger = logging.getLogger(__name__)

Record = dict[str, Any]
Doc = dict[str, Any]
T = TypeVar("T")

LISTS = ("trainings", "checks", "alerts")
# Sized so that with 17 models the main file stays under about 1.4 MB (a training ~3.5 kB,
# an hourly check ~1.9 kB): an append (parse, dump, fsync) and a cold read stay well under
# 50 ms. That is 6 months of daily runs and 2 weeks of hourly checks; the rest is archived.
DEFAULT_LIMITS: dict[str, int] = {
    "trainings": 200, "checks": 336, "alerts": 500, "model_versions": 60,
}
STATUSES = ("running", "success", "partial", "failed", "interrupted")
TRIGGERS = ("daily", "manual", "retrain", "catch-up")  # known values; not enforced
TREND_WINDOW = 5
TREND_TOLERANCE = 0.01


class HistoryWriteError(OSError):
    """The history could not be written; the files on disk are as they were."""


class HistoryPermissionError(HistoryWriteError, PermissionError):
    """The history could not be written for lack of permission (also a PermissionError)."""


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat()


def parse_timestamp(value: object) -> datetime | None:
    """An ISO timestamp string or datetime as an aware datetime (naive means UTC)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def models_in(record: Mapping[str, Any]) -> set[str]:
    """Model names a training or check mentions (`model`, `models`, `model_details`,
    `results`); `model_details` may be grouped (`prediction_models`: {...}) or flat."""
    names: set[str] = set()
    if isinstance(record.get("model"), str):
        names.add(record["model"])
    for key in ("models", "results"):
        value = record.get(key)
        if isinstance(value, list | dict):
            names.update(str(name) for name in value)
    details = record.get("model_details")
    if isinstance(details, dict):
        for key, value in details.items():
            if key.endswith("_models") and isinstance(value, dict):
                names.update(value)
            else:
                names.add(key)
    return names


def _model_results(record: Mapping[str, Any]) -> Iterator[tuple[str, str | None, Record]]:
    """(name, group, result) for each model in a training's `model_details`."""
    details = record.get("model_details")
    if not isinstance(details, dict):
        return
    for key, value in details.items():
        if key.endswith("_models") and isinstance(value, dict):
            for name, result in value.items():
                if isinstance(result, dict):
                    yield name, key, result
        elif isinstance(value, dict):
            yield key, None, value


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def successful_models(record: Mapping[str, Any]) -> int:
    count = _number(record.get("successful_models"))
    if count is not None:
        return int(count)
    return sum(1 for _, _, result in _model_results(record) if result.get("passed") is True)


def is_successful(record: Mapping[str, Any]) -> bool:
    """A run counts as successful only with status "success" and at least one good model."""
    return record.get("status") == "success" and successful_models(record) > 0


def _empty_totals() -> Record:
    # `durations` counts finished runs by duration rounded up to a whole second: exact for
    # any whole-second histogram bound a reader picks, and small (one key per distinct
    # second). `retrains_by_model`: runs with trigger "retrain", per model they trained.
    return {"count": 0, "successful": 0, "by_status": {}, "models_trained": 0,
            "accuracy_sum": 0.0, "accuracy_count": 0, "last_training": None,
            "durations": {}, "duration_sum": 0.0, "retrains_by_model": {}}


def _accumulate(totals: Record, record: Mapping[str, Any]) -> None:
    """Add one finished training to running totals (a running one is not counted yet)."""
    status = str(record.get("status", "unknown"))
    if status == "running":
        return
    totals["count"] += 1
    totals["by_status"][status] = totals["by_status"].get(status, 0) + 1
    totals["successful"] += int(is_successful(record))
    totals["models_trained"] += int(_number(record.get("models_trained")) or 0)
    accuracy = _number(record.get("avg_accuracy"))
    if accuracy is not None and successful_models(record) > 0:
        totals["accuracy_sum"] += accuracy
        totals["accuracy_count"] += 1
    stamp, last = parse_timestamp(record.get("timestamp")), totals["last_training"]
    if stamp is not None and (last is None or stamp > (parse_timestamp(last) or stamp)):
        totals["last_training"] = record["timestamp"]
    duration = _number(record.get("duration_seconds"))
    if duration is not None and math.isfinite(duration) and duration >= 0:
        _count(totals["durations"], str(math.ceil(duration)))
        totals["duration_sum"] += duration
    if record.get("trigger") == "retrain":
        for name in models_in(record):
            _count(totals["retrains_by_model"], name)


def _count(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def _count_kinds(counts: dict[str, int], alerts: Iterable[Mapping[str, Any]]) -> None:
    for alert in alerts:
        _count(counts, str(alert.get("kind") or "unknown"))


def empty_doc() -> Doc:
    return {"trainings": [], "checks": [], "model_versions": {}, "alerts": [],
            "archive": {"trainings": _empty_totals(), "checks": 0, "alerts": 0,
                        "alerts_by_kind": {}, "model_versions": 0}}


def _is_records(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def validate(obj: object) -> Doc:
    """`obj` as a history document (missing parts added), or ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"top level is {type(obj).__name__}, not an object")
    doc = empty_doc()
    for key in LISTS:
        if key in obj:
            if not _is_records(obj[key]):
                raise ValueError(f"{key!r} is not a list of objects")
            doc[key] = obj[key]
    versions = obj.get("model_versions", {})
    if not isinstance(versions, dict) or not all(_is_records(v) for v in versions.values()):
        raise ValueError("'model_versions' is not an object of lists of objects")
    doc["model_versions"] = versions
    archive = obj.get("archive", doc["archive"])
    if (not isinstance(archive, dict) or not isinstance(archive.get("trainings"), dict)
            or not isinstance(archive.get("alerts_by_kind", {}), dict)
            or not all(isinstance(archive.get(k, 0), int) for k in doc["archive"]
                       if k not in ("trainings", "alerts_by_kind"))):
        raise ValueError("'archive' totals are malformed")
    doc["archive"] = {**doc["archive"], **archive,
                      "trainings": {**_empty_totals(), **archive["trainings"]}}
    return doc


def _overlap_merge(old: list[Record], new: list[Record]) -> list[Record]:
    """`old + new` without the prefix of `new` that is already the tail of `old` (left by a
    crash between writing an archive and the main file)."""
    if new:
        for k in range(min(len(old), len(new)), 0, -1):
            if old[-k] == new[0] and old[-k:] == new[:k]:
                return old + new[k:]
    return old + new


def _spill(entries: list[Record], limit: int) -> list[Record]:
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


def _year(record: Mapping[str, Any]) -> int:
    stamp = parse_timestamp(record.get("timestamp"))
    return stamp.year if stamp else datetime.now(UTC).year


class History:
    """The training history at `path`; safe to use from several threads and processes."""

    def __init__(self, path: Path, *, limits: Mapping[str, int] | int | None = None,
                 rebuild: Callable[[], Mapping[str, Any]] | None = None,
                 lock_timeout: float = 60.0) -> None:
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
        self.recovered_from: Path | None = None
        self._cache: tuple[bytes, Doc] | None = None

    # ---- mutations -------------------------------------------------------------------------

    def append_training(self, record: Mapping[str, Any]) -> Record:
        """Add a run (normally with status "running"); fills `run_id` and `timestamp`."""
        entry = self._stamped(record)
        entry.setdefault("run_id", f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid4().hex[:8]}")
        entry.setdefault("status", "running")
        self._check_status(entry)

        def change(doc: Doc) -> Record:
            if any(t.get("run_id") == entry["run_id"] for t in doc["trainings"]):
                raise ValueError(f"training run {entry['run_id']} is already recorded")
            doc["trainings"].append(entry)
            return entry

        return _clone(self._mutate(change))

    def update_training(self, run_id: str, **fields: Any) -> Record:
        """Change fields of a recorded run (e.g. status running -> success); KeyError if none."""
        if fields.get("run_id", run_id) != run_id:
            raise ValueError("a training's run_id cannot be changed")
        self._check_status(fields)

        def change(doc: Doc) -> Record:
            for entry in reversed(doc["trainings"]):
                if entry.get("run_id") == run_id:
                    entry.update(fields)
                    return dict(entry)
            raise KeyError(f"no training run {run_id!r} in {self.path}")

        return _clone(self._mutate(change))

    def append_check(self, record: Mapping[str, Any]) -> Record:
        """Add a performance check (fills `timestamp`)."""
        return self._append(record, lambda doc: doc["checks"])

    def append_alert(self, record: Mapping[str, Any]) -> Record:
        """Add an alert; fills `id` and `timestamp` when missing."""
        return self._append({"id": uuid4().hex, **record}, lambda doc: doc["alerts"])

    def add_model_version(self, name: str, entry: Mapping[str, Any]) -> Record:
        """Record a new version of model `name` (fills `timestamp`)."""
        return self._append(entry, lambda doc: doc["model_versions"].setdefault(name, []))

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

        def change(doc: Doc) -> None:
            known = {t.get("run_id") for t in doc["trainings"]} - {None}
            for entry in new_trainings:
                if entry.get("run_id") is not None and entry["run_id"] in known:
                    raise ValueError(f"training run {entry['run_id']} is already recorded")
                known.add(entry.get("run_id"))
            doc["trainings"] += new_trainings
            doc["checks"] += new_checks
            doc["alerts"] += new_alerts
            for name, entries in new_versions.items():
                doc["model_versions"].setdefault(name, []).extend(entries)

        self._mutate(change)

    def mark_interrupted(self, is_running: Callable[[str], bool]) -> list[str]:
        """Runs recorded as "running" whose run is gone become "interrupted"; their ids.

        `is_running(run_id)` is called with the history lock held: it must not write the
        history. When it raises, that run is left as it is."""
        marked: list[str] = []

        def change(doc: Doc) -> bool:
            now = utc_now_iso()
            for entry in doc["trainings"]:
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

        self._mutate(change, write_if=lambda changed: bool(changed))
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
                    and (moment is None or _at_or_after(entry, moment)))

        return self._page("trainings", keep, limit, offset, archived, moment)

    def get_training(self, run_id: str, *, archived: bool = True) -> Record | None:
        for entry in self._newest_first("trainings", archived, None):
            if entry.get("run_id") == run_id:
                return _clone(entry)
        return None

    def checks(self, limit: int = 50, offset: int = 0, *, model: str | None = None,
               since: str | datetime | None = None, archived: bool = False) -> list[Record]:
        moment = self._since(since)

        def keep(entry: Record) -> bool:
            return ((model is None or model in models_in(entry))
                    and (moment is None or _at_or_after(entry, moment)))

        return self._page("checks", keep, limit, offset, archived, moment)

    def alerts(self, limit: int = 50, offset: int = 0, *, since: str | datetime | None = None,
               archived: bool = False) -> list[Record]:
        moment = self._since(since)
        return self._page("alerts", lambda e: moment is None or _at_or_after(e, moment),
                          limit, offset, archived, moment)

    @overload
    def model_versions(self, name: str) -> list[Record]: ...

    @overload
    def model_versions(self, name: None = None) -> dict[str, list[Record]]: ...

    def model_versions(self, name: str | None = None) -> Any:
        """Versions recorded in the main file, oldest first: a list for `name`, else a dict."""
        versions = self._load()["model_versions"]
        return _clone(versions.get(name, []) if name is not None else versions)

    def stats(self) -> Record:
        """The guide's stats over every run ever recorded (archives included), plus
        `by_status`, `running_trainings` and a per-model trend of the latest scores."""
        doc = self._load()
        totals = _all_time(doc)
        count, accuracy_n = totals["count"], totals["accuracy_count"]
        return {
            "total_trainings": count,
            "successful_trainings": totals["successful"],
            "success_rate": round(100.0 * totals["successful"] / count, 2) if count else 0.0,
            "total_models_trained": totals["models_trained"],
            "avg_accuracy": round(totals["accuracy_sum"] / accuracy_n, 4) if accuracy_n else None,
            "last_training": totals["last_training"],
            "by_status": totals["by_status"],
            "running_trainings": sum(t.get("status") == "running" for t in doc["trainings"]),
            "per_model": _trends(doc["trainings"]),
        }

    def metrics_totals(self) -> Record:
        """All-time counts for monitoring, archives included, so they never go down when
        entries are archived: finished runs `by_status`, `durations` ({whole seconds rounded
        up: runs}) and `duration_sum` of those with a duration, `retrains_by_model`, and
        `alerts_by_kind`."""
        doc = self._load()
        totals = _all_time(doc)
        alerts = dict(doc["archive"]["alerts_by_kind"])
        _count_kinds(alerts, doc["alerts"])
        return {"by_status": totals["by_status"],
                "durations": {int(k): n for k, n in totals["durations"].items()},
                "duration_sum": totals["duration_sum"],
                "retrains_by_model": totals["retrains_by_model"], "alerts_by_kind": alerts}

    def archived_years(self) -> list[int]:
        pattern = f"{self.path.stem}.[0-9][0-9][0-9][0-9]{self.path.suffix}"
        return sorted(int(p.name[len(self.path.stem) + 1:][:4])
                      for p in self.path.parent.glob(pattern))

    def archive_path(self, year: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.{year:04d}{self.path.suffix}")

    def archive(self, year: int) -> Doc:
        """One year's archive (the same shape, without totals; empty when there is none)."""
        doc = self._read_archive(self.archive_path(year)) or empty_doc()
        doc.pop("archive", None)
        return doc

    # ---- internals -------------------------------------------------------------------------

    def _append(self, record: Mapping[str, Any], where: Callable[[Doc], list[Record]]) -> Record:
        entry = self._stamped(record)

        def change(doc: Doc) -> Record:
            where(doc).append(entry)
            return entry

        return _clone(self._mutate(change))

    @staticmethod
    def _stamped(record: Mapping[str, Any]) -> Record:
        entry = _clone(dict(record))
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
        return _clone(page)

    def _newest_first(self, kind: str, archived: bool, since: datetime | None) -> Iterator[Record]:
        yield from reversed(self._load()[kind])
        if archived:
            for year in reversed(self.archived_years()):
                if since is not None and year < since.astimezone(UTC).year - 1:
                    break  # a year file may hold entries up to a day into the next UTC year
                yield from reversed((self._read_archive(self.archive_path(year)) or {})
                                    .get(kind, []))

    def _load(self) -> Doc:
        """The current document for reading (shared: callers must not change it)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if not self.archived_years():
                return empty_doc()
            return self._mutate(lambda doc: doc, write_if=lambda _: False)  # recount archives
        cached = self._cache
        if cached is not None and cached[0] == raw:
            return cached[1]
        try:
            doc = validate(json.loads(raw))
        except ValueError:
            return self._mutate(lambda doc: doc, write_if=lambda _: False)
        self._cache = (raw, doc)
        return doc

    def _mutate(self, change: Callable[[Doc], T],
                write_if: Callable[[T], bool] = lambda _: True) -> T:
        """Under the lock: read (recovering a corrupt file), change, archive overflow, write."""
        try:
            with file_lock(self.lock_path, timeout=self.lock_timeout, purpose="training history"):
                doc = self._read_locked()
                result = change(doc)
                if write_if(result):
                    self._write(doc)
                return result
        except HistoryWriteError:
            raise
        except OSError as exc:
            kind = HistoryPermissionError if isinstance(exc, PermissionError) else HistoryWriteError
            raise kind(exc.errno, f"cannot write the training history {self.path}: {exc}") from exc

    def _read_locked(self) -> Doc:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self._recover(None) if self.archived_years() else empty_doc()
        try:
            return validate(json.loads(raw))
        except ValueError as exc:
            return self._recover(str(exc))

    def _write(self, doc: Doc) -> None:
        self._archive_overflow(doc)
        atomic_write_json(self.path, doc, indent=None)
        self._cache = (self.path.read_bytes(), doc)

    def _archive_overflow(self, doc: Doc) -> None:
        """Move the oldest entries of every list over its limit into the year archives."""
        moved: dict[int, Doc] = {}

        def part(entry: Record) -> Doc:
            return moved.setdefault(_year(entry), empty_doc())

        totals = doc["archive"]
        for entry in _spill(doc["trainings"], self.limits["trainings"]):
            part(entry)["trainings"].append(entry)
            _accumulate(totals["trainings"], entry)
        for kind in ("checks", "alerts"):
            evicted = _spill(doc[kind], self.limits[kind])
            totals[kind] += len(evicted)
            if kind == "alerts":
                _count_kinds(totals["alerts_by_kind"], evicted)
            for entry in evicted:
                part(entry)[kind].append(entry)
        for name, entries in doc["model_versions"].items():
            evicted = _spill(entries, self.limits["model_versions"])
            totals["model_versions"] += len(evicted)
            for entry in evicted:
                part(entry)["model_versions"].setdefault(name, []).append(entry)
        for year, entries in sorted(moved.items()):
            self._append_archive(year, entries, doc)

    def _append_archive(self, year: int, part: Doc, doc: Doc) -> None:
        path = self.archive_path(year)
        existing = self._read_archive(path, doc_for_alert=doc) or empty_doc()
        for kind in LISTS:
            existing[kind] = _overlap_merge(existing[kind], part[kind])
        for name, entries in part["model_versions"].items():
            old = existing["model_versions"].get(name, [])
            existing["model_versions"][name] = _overlap_merge(old, entries)
        existing.pop("archive", None)
        atomic_write_json(path, existing, indent=None)

    def _read_archive(self, path: Path, doc_for_alert: Doc | None = None) -> Doc | None:
        """An archive file, or None when missing; a corrupt one is moved aside when writing."""
        try:
            return validate(read_json(path))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            if doc_for_alert is None:
                logger.error("history archive %s is unreadable (%s); skipped", path, exc)
                return None
            aside = self._move_aside(path)
            logger.critical("history archive %s was unreadable (%s); moved to %s", path, exc,
                            aside)
            doc_for_alert["alerts"].append(self._stamped({
                "id": uuid4().hex, "level": "critical", "kind": "history_archive_corrupt",
                "message": f"history archive {path.name} was unreadable ({exc}); "
                           f"moved aside to {aside}, a new one was started"}))
            return None

    def _move_aside(self, path: Path) -> Path:
        stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        aside, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
        while aside.exists():
            n += 1
            aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        os.rename(path, aside)
        return aside

    def _recover(self, reason: str | None) -> Doc:
        """(Lock held.) Move the unreadable main file aside (`reason`), or find it missing
        while archives exist (None), and start a new one: archived totals recounted from
        the year files, recent entries from the `rebuild` callback."""
        if reason is None:
            what = f"training history {self.path} was missing while archives exist"
            logger.critical("%s; recounting the archives and rebuilding it", what)
            alert_kind = "history_missing"
        else:
            aside = self.recovered_from = self._move_aside(self.path)
            what = f"training history was unreadable ({reason}); moved aside to {aside}"
            logger.critical("training history %s is unreadable (%s); moved aside to %s",
                            self.path, reason, aside)
            alert_kind = "history_corrupt"
        doc = empty_doc()
        seen_runs: set[str] = set()
        seen_versions: set[tuple[str, str]] = set()
        for year in self.archived_years():  # archived totals were in the lost file: recount
            part = self._read_archive(self.archive_path(year)) or empty_doc()
            for entry in part["trainings"]:
                _accumulate(doc["archive"]["trainings"], entry)
                seen_runs.add(str(entry.get("run_id")))
            for kind in ("checks", "alerts"):
                doc["archive"][kind] += len(part[kind])
            _count_kinds(doc["archive"]["alerts_by_kind"], part["alerts"])
            for name, entries in part["model_versions"].items():
                doc["archive"]["model_versions"] += len(entries)
                seen_versions.update((name, _version_key(v)) for v in entries)
        rebuilt = self._rebuilt()
        doc["trainings"] = sorted(
            (t for t in rebuilt["trainings"] if str(t.get("run_id")) not in seen_runs),
            key=lambda t: parse_timestamp(t.get("timestamp")) or datetime.min.replace(tzinfo=UTC))
        doc["checks"] = rebuilt["checks"]
        doc["model_versions"] = {
            name: [v for v in entries if (name, _version_key(v)) not in seen_versions]
            for name, entries in rebuilt["model_versions"].items()}
        doc["alerts"] = rebuilt["alerts"] + [self._stamped({
            "id": uuid4().hex, "level": "critical", "kind": alert_kind,
            "message": f"{what}; rebuilt {len(doc['trainings'])} trainings and "
                       f"{sum(map(len, doc['model_versions'].values()))} model versions"})]
        self._write(doc)
        return doc

    def _rebuilt(self) -> Doc:
        if self.rebuild is None:
            return empty_doc()
        try:
            part = dict(self.rebuild())
            part.pop("archive", None)
            return validate(json.loads(json.dumps(part, default=str)))
        except Exception:
            logger.exception("rebuilding the training history failed; starting it empty")
            return empty_doc()


def _all_time(doc: Doc) -> Record:
    """The archived training totals plus the main file's finished runs (a copy)."""
    totals: Record = _clone(doc["archive"]["trainings"])
    for entry in doc["trainings"]:
        _accumulate(totals, entry)
    return totals


def _version_key(entry: Mapping[str, Any]) -> str:
    return str(entry.get("version") or entry.get("timestamp"))


def _at_or_after(entry: Mapping[str, Any], moment: datetime) -> bool:
    stamp = parse_timestamp(entry.get("timestamp"))
    return stamp is not None and stamp >= moment


def _clone(value: T) -> T:
    """A deep copy of JSON data (faster than copy.deepcopy)."""
    copied: T = json.loads(json.dumps(value, default=str))
    return copied


def _trends(trainings: list[Record]) -> dict[str, Record]:
    """Per model: its latest scores (oldest to newest) and whether they go up or down."""
    found: dict[str, Record] = {}
    for entry in reversed(trainings):
        if entry.get("status") == "running":
            continue
        for name, group, result in _model_results(entry):
            score = _number(result.get("score"))
            if score is None:
                continue
            trend = found.setdefault(name, {"group": group, "metric": result.get("metric"),
                                            "scores": [], "last_timestamp": entry.get("timestamp")})
            if len(trend["scores"]) < TREND_WINDOW:
                trend["scores"].insert(0, score)
    for trend in found.values():
        scores = trend["scores"]
        trend["latest"] = scores[-1]
        change = scores[-1] - sum(scores[:-1]) / len(scores[:-1]) if len(scores) > 1 else 0.0
        trend["direction"] = ("improving" if change > TREND_TOLERANCE
                              else "declining" if change < -TREND_TOLERANCE else "stable")
    return dict(sorted(found.items()))
