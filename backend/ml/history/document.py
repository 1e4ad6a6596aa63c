"""The training history's document: its shape, its limits and the helpers that read records.

The main file (normally `LOGS_DIR/training_history.json`) holds the recent entries plus the
running totals of what has been archived:

    {"trainings": [...], "checks": [...], "model_versions": {name: [...]}, "alerts": [...],
     "archive": {"trainings": {count, successful, ...}, "checks": n, "alerts": n,
                 "alerts_by_kind": {kind: n}, "model_versions": n}}

A year archive (`training_history.YYYY.json`) has the same lists without `archive`.
Every list is kept oldest first. Records inside the lists are free-form JSON objects; the
lists, the per-model map and the archive totals are checked, so a file of another shape
counts as damaged.

Files written by earlier releases have the same shape; one written before a totals key
existed loads with that key empty (the models' defaults), so entries archived back then
are counted in `count`/`by_status`/`alerts` but not in the breakdowns added later.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Record = dict[str, Any]
T = TypeVar("T")

LISTS = ("trainings", "checks", "alerts")
# Sized so that with 17 models the main file stays under about 1.4 MB (a training ~3.5 kB,
# an hourly check ~1.9 kB): an append (parse, dump, fsync) and a cold read stay well under
# 50 ms. That is 6 months of daily runs and 2 weeks of hourly checks; the rest is archived.
DEFAULT_LIMITS: dict[str, int] = {
    "trainings": 200, "checks": 336, "alerts": 500, "model_versions": 60,
}
STATUSES = ("running", "success", "partial", "failed", "interrupted")
# What starts a run; the runner refuses any other, the history records what it is given.
TRIGGERS = ("daily", "manual", "retrain", "catch-up")


class HistoryWriteError(OSError):
    """The history could not be written; the files on disk are as they were."""


class HistoryPermissionError(HistoryWriteError, PermissionError):
    """The history could not be written for lack of permission (also a PermissionError)."""


# ---- the document ------------------------------------------------------------------------


class TrainingTotals(BaseModel):
    """Running totals of archived trainings: what all-time stats and metrics need.

    `durations` counts finished runs by duration rounded up to a whole second: exact for any
    whole-second histogram bound a reader picks, and small (one key per distinct second).
    `retrains_by_model`: runs with trigger "retrain", per model they trained.
    """

    # Strict: a count that is a string or a float is damage, not something to coerce.
    # Unknown keys are kept, so a newer release's totals survive a round trip.
    model_config = ConfigDict(strict=True, extra="allow")

    count: int = 0
    successful: int = 0
    by_status: dict[str, int] = Field(default_factory=dict)
    models_trained: int = 0
    accuracy_sum: float = 0.0
    accuracy_count: int = 0
    last_training: str | None = None
    durations: dict[str, int] = Field(default_factory=dict)
    duration_sum: float = 0.0
    retrains_by_model: dict[str, int] = Field(default_factory=dict)


class ArchiveTotals(BaseModel):
    """How much has moved from the main file into the year archives, all time."""

    model_config = ConfigDict(strict=True, extra="allow")

    trainings: TrainingTotals = Field(default_factory=TrainingTotals)
    checks: int = 0
    alerts: int = 0
    alerts_by_kind: dict[str, int] = Field(default_factory=dict)
    model_versions: int = 0


class YearArchive(BaseModel):
    """The entries of one year archive file (also the lists of the main file)."""

    model_config = ConfigDict(strict=True)

    trainings: list[Record] = Field(default_factory=list)
    checks: list[Record] = Field(default_factory=list)
    model_versions: dict[str, list[Record]] = Field(default_factory=dict)
    alerts: list[Record] = Field(default_factory=list)

    def entries(self, kind: str) -> list[Record]:
        """The list `kind` ("trainings", "checks" or "alerts")."""
        if kind not in LISTS:
            raise ValueError(f"{kind!r} is not one of {LISTS}")
        entries: list[Record] = getattr(self, kind)
        return entries


class HistoryDocument(YearArchive):
    """The main file: recent entries plus the archive totals."""

    archive: ArchiveTotals = Field(default_factory=ArchiveTotals)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> HistoryDocument:
        # Every change copies the whole document (up to ~1.4 MB of nested records). Dumping
        # builds new containers all the way down, several times faster than copy.deepcopy,
        # and what was validated once needs no validating again.
        lists = self.model_dump(exclude={"archive"})
        return type(self).model_construct(**lists, archive=self.archive.model_copy(deep=True))


def empty_document() -> HistoryDocument:
    return HistoryDocument()


# ---- time stamps -------------------------------------------------------------------------


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


def at_or_after(entry: Mapping[str, Any], moment: datetime) -> bool:
    stamp = parse_timestamp(entry.get("timestamp"))
    return stamp is not None and stamp >= moment


def year_of(record: Mapping[str, Any]) -> int:
    """The year archive an entry belongs to (this year when it has no readable time)."""
    stamp = parse_timestamp(record.get("timestamp"))
    return stamp.year if stamp else datetime.now(UTC).year


# ---- records -----------------------------------------------------------------------------


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


def model_results(record: Mapping[str, Any]) -> Iterator[tuple[str, str | None, Record]]:
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


def number(value: object) -> float | None:
    """`value` as a float when it is a JSON number (a bool is not one)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def successful_models(record: Mapping[str, Any]) -> int:
    count = number(record.get("successful_models"))
    if count is not None:
        return int(count)
    return sum(1 for _, _, result in model_results(record) if result.get("passed") is True)


def is_successful(record: Mapping[str, Any]) -> bool:
    """A run counts as successful only with status "success" and at least one good model."""
    return record.get("status") == "success" and successful_models(record) > 0


def version_key(entry: Mapping[str, Any]) -> str:
    """What tells two records of one model's versions apart."""
    return str(entry.get("version") or entry.get("timestamp"))


def clone(value: T) -> T:
    """A deep copy of JSON data, anything not JSON turned into its string (faster than
    copy.deepcopy, and what is stored is then exactly what a reader gets back)."""
    copied: T = json.loads(json.dumps(value, default=str))
    return copied
