"""Replay: fit a stored version again from the database's rows and say whether it is the same.

A version records what it learnt from (`training_data`: window, rows, content hashes, the
options and parameters followed, the estimator's description), the libraries it was fitted
with and `model_hash`, the fitted estimator's hash. `replay` loads the version's metadata
(verified: signed, model file whole), reads the model's table, keeps the rows the fit could
have seen (event time up to the recorded window's end; earlier rows all stay, so a spec's
lags see the history they saw; labels as known at the recorded `labels_as_of`), fits
with the recorded options and compares the hashes.
Equal: "same". Otherwise it names what differs: the rows (count, window, and the months
whose content changed), the estimator's description (code), the library versions.

A search is not run again: the recorded parameters are its pick, and a fit with them is the
fit the search made. Versions saved before training data was recorded cannot be replayed
exactly; for them the data fingerprint of today's rows up to their `data_end` is compared
with theirs, which says whether the rows and parameters are the same but not what changed.

Nothing here writes: no version is saved, no alias moves, the database is opened read-only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from backend.ml.data import loading, schema
from backend.ml.fleet.specs import ModelSpec, get_spec
from backend.ml.registry.store import library_versions
from backend.ml.training import trainer
from backend.ml.training.fingerprint import data_fingerprint

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from backend.ml.registry.store import ModelStore

SAME, DIFFERENT = "same", "different"
# Versions saved before `training_data`: only the data fingerprint can be compared.
FINGERPRINT_SAME, FINGERPRINT_DIFFERS, NOT_COMPARABLE = (
    "fingerprint_same", "fingerprint_differs", "not_comparable")
AGREES = (SAME, FINGERPRINT_SAME)


@dataclass
class Replay:
    """The outcome of replaying one version; `changes` name what differs, one line each."""

    name: str
    version: str
    verdict: str
    stored_hash: str | None = None
    replayed_hash: str | None = None
    window: list[str | None] = field(default_factory=list)  # the recorded one
    rows: dict[str, int | None] = field(default_factory=dict)  # {"stored": n, "now": m}
    changes: list[str] = field(default_factory=list)
    note: str | None = None

    @property
    def same(self) -> bool:
        return self.verdict in AGREES

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def replay(store: ModelStore, engine: Engine, name: str, version: str) -> Replay:
    """Fit `name` `version` again on the rows of `engine` it could have seen; compare."""
    spec = get_spec(name)
    meta = store.verify(name, version)  # StoreError for an unknown or damaged version
    recorded = meta.get("training_data")
    # The labels the fit could see: those known when it loaded its rows (recorded since
    # label times were; before, every label on file).
    as_of = recorded.get("labels_as_of") if isinstance(recorded, dict) else None
    table = loading.load_table(engine, spec.table, columns=trainer.input_columns(spec),
                               labels_as_of=None if as_of is None else pd.Timestamp(as_of))
    tcol = schema.time_column(spec.table)
    if not isinstance(recorded, dict) or not isinstance(meta.get("model_hash"), str):
        end = meta.get("data_end")
        return _legacy(spec, version, meta, table[table[tcol] <= pd.Timestamp(end)]
                       if isinstance(end, str) else table.iloc[:0])
    # Rows after the window came later; earlier ones all stay (lags read back from a row).
    seen = table[table[tcol] <= pd.Timestamp(recorded["window"][1])]
    result = trainer.train_one(spec, seen, threshold=float(meta["threshold"]),
                               options=recorded_options(recorded))
    out = Replay(spec.name, version, DIFFERENT, stored_hash=meta["model_hash"],
                 replayed_hash=result.model_hash, window=list(recorded["window"]),
                 rows={"stored": recorded["rows"], "now": result.training_data.get("rows")})
    if result.failed:
        out.changes.append(f"the fit failed: {result.error}")
        return out
    if result.model_hash == out.stored_hash:
        out.verdict = SAME
        return out
    out.changes += row_changes(recorded, result.training_data)
    out.changes += _differences("estimator", recorded.get("estimator"),
                                result.training_data["estimator"],
                                skip="scikit-learn")  # named under libraries
    out.changes += _differences("libraries", meta.get("libraries"), library_versions())
    if not out.changes:
        out.note = ("the rows, the estimator and the libraries are as recorded, yet the "
                    "model differs: the fit is not deterministic")
    return out


def recorded_options(recorded: dict[str, Any]) -> trainer.TrainOptions:
    """The options that make a recorded fit again: those it followed, with a search's pick
    as plain parameters (a search's final fit is a plain fit of the parameters it picked)."""
    options = dict(recorded["train_options"])
    if options["strategy"] == "search":
        options["strategy"] = "full"
    return trainer.TrainOptions(**options)


def row_changes(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two `training_data` records' rows, one line per fact."""
    lines = []
    if stored["rows"] != now["rows"]:
        lines.append(f"rows: {stored['rows']} then, {now['rows']} now "
                     f"({now['rows'] - stored['rows']:+d})")
    if stored["window"] != now["window"]:
        lines.append(f"window: {_span(stored['window'])} then, {_span(now['window'])} now")
    if stored["content_sha256"] != now["content_sha256"]:
        then, later = stored.get("content_by_month", {}), now.get("content_by_month", {})
        changed = [m for m in sorted({*then, *later}) if then.get(m) != later.get(m)]
        for first, last in _month_runs(changed):
            before = sum(then.get(m, [0])[0] for m in changed if first <= m <= last)
            after = sum(later.get(m, [0])[0] for m in changed if first <= m <= last)
            start = pd.Period(first, "M").start_time.date()
            stop = pd.Period(last, "M").end_time.date()
            # Only counts and hashes per month are recorded: which rows changed is not known
            if after == before:
                lines.append(f"content: rows changed inside {start}..{stop} "
                             f"(same count, {after})")
            else:
                lines.append(f"content: rows {'added' if after > before else 'removed'} or "
                             f"changed inside {start}..{stop} ({before} then, {after} now, "
                             f"{after - before:+d})")
        if not changed:
            lines.append("content: the rows differ (in order or value), same in every month")
    return lines


def _span(window: list[str | None]) -> str:
    return f"{window[0]}..{window[1]}"


def _month_runs(months: list[str]) -> list[tuple[str, str]]:
    """Sorted "YYYY-MM" months as runs of consecutive months, (first, last) each."""
    runs: list[tuple[str, str]] = []
    for month in months:
        if runs and pd.Period(runs[-1][1], "M") + 1 == pd.Period(month, "M"):
            runs[-1] = (runs[-1][0], month)
        else:
            runs.append((month, month))
    return runs


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _differences(what: str, stored: Any, now: Any, skip: str = "") -> list[str]:
    """`what: key then -> now` for every leaf that differs between two JSON values."""
    if stored is None:
        return [f"{what}: not recorded in the version"]
    then, later = _flat(stored), _flat(now)
    # As JSON text: a NaN parameter (read back from the metadata) equals itself there
    return [f"{what}: {key} {then.get(key, '(absent)')} -> {later.get(key, '(absent)')}"
            for key in sorted({*then, *later}) if key != skip
            and json.dumps(then.get(key), sort_keys=True) != json.dumps(later.get(key),
                                                                        sort_keys=True)]


def _legacy(spec: ModelSpec, version: str, meta: dict[str, Any],
            seen: pd.DataFrame) -> Replay:
    """A version without training data: compare its data fingerprint, the one fact it has.
    `seen` are the table's rows up to the version's `data_end`."""
    note = (f"{spec.name} {version} was saved before versions recorded their training data "
            "and model hash: it cannot be replayed exactly. ")
    stored, end = meta.get("data_fingerprint"), meta.get("data_end")
    out = Replay(spec.name, version, NOT_COMPARABLE, window=[meta.get("data_start"), end],
                 rows={"stored": _total(meta), "now": None})
    if not isinstance(stored, str) or not isinstance(end, str):
        out.note = note + "It has no data fingerprint either: nothing can be compared."
        return out
    try:
        labelled, _ = trainer.labelled_frame(spec, seen)
    except trainer.TrainingError as exc:
        out.note = note + f"Today's rows cannot be prepared for it: {exc}"
        return out
    out.rows["now"] = len(labelled)
    # Only the strategy is recorded; a retry's window, half-life or parameters are not.
    options = trainer.TrainOptions(strategy=str(meta.get("strategy") or "full"))
    same = data_fingerprint(spec, labelled, options) == stored
    out.verdict = FINGERPRINT_SAME if same else FINGERPRINT_DIFFERS
    out.note = note + ("Compared instead: the data fingerprint of today's rows up to its "
                       f"data_end {end} with strategy {options.strategy!r}: "
                       + ("equal, so the rows, options and estimator are the same." if same
                          else "different: the rows, the options (a retry's are not "
                               "recorded) or the estimator changed; which is not known."))
    return out


def _total(meta: dict[str, Any]) -> int | None:
    train, holdout = meta.get("rows_train"), meta.get("rows_holdout")
    return train + holdout if isinstance(train, int) and isinstance(holdout, int) else None
