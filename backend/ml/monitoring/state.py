"""What the monitor remembers between checks, per model: `LOGS_DIR/monitor_state.json`.

    {name: {"verdict", "version", "since", "cooldown": {"newest_data", "until"},
            "ab": {"version", "wins"}, "trend": {"version", "scores"},
            "estimate": {...}, "awaiting_labels": [{...}], "shift_since"}}

`verdict` is the monitor's standing verdict on `version` (hysteresis needs the previous
one, and a degraded model that is healthy again is announced as `recovered`), `since` the
check that first reached it; `cooldown` is set when retraining is exhausted, until new data
or the next daily run. `estimate` is the newest check's estimate of the score on rows whose
labels are pending, `awaiting_labels` the estimates whose realized score is not known yet
(`estimated.py`), `shift_since` where the newest shift of the model's world began, as a
check found it. The file is a `StateFile`: each model's entry is replaced under the
lock when that model's part of a check is done, so a check never holds the lock for its
whole length and never overwrites what another process wrote about another model
meanwhile. A damaged file is rebuilt empty: the next check finds every verdict again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, RootModel

from backend.ml.statefile import Recovery, StateFile

STATE_FILE = "monitor_state.json"


class Cooldown(BaseModel):
    newest_data: str
    until: datetime


class ABState(BaseModel):
    version: str
    wins: int = 0


class ScoreTrail(BaseModel):
    version: str
    scores: list[float] = Field(default_factory=list)


class EstimateState(BaseModel):
    """An estimate of `version`'s score on the rows of `window` whose labels were pending,
    made by check `check_id` (see `monitoring/estimated.py`)."""

    check_id: str
    timestamp: datetime
    version: str
    metric: str
    estimated_value: float
    estimated_low: float
    estimated_high: float
    estimated_rows: int
    method: str
    window: tuple[str, str]  # the first and last pending row's time
    below_threshold: bool  # the whole interval under the threshold


class ModelMonitorState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    verdict: str | None = None
    # The version the verdict is about; None in files of the previous release, whose
    # verdict was about whatever served then.
    version: str | None = None
    since: datetime | None = None  # None in files written before it was kept
    cooldown: Cooldown | None = None
    ab: ABState | None = None
    trend: ScoreTrail | None = None
    # The newest check's estimate (None when it had labels enough, or could not estimate),
    # and the estimates still waiting for their labels, oldest first.
    estimate: EstimateState | None = None
    awaiting_labels: list[EstimateState] = Field(default_factory=list)
    # The time of the first row after the newest sure step in the live errors a check
    # found (`shift.rows_since_shift`): every fit holds out only the newest half of the
    # rows since, until the default holdout is the smaller (`shift.shift_holdout_start`)
    shift_since: datetime | None = None

    def cooling_until(self, now: datetime) -> datetime | None:
        """The end of a cooldown still running at `now`, else None."""
        if self.cooldown is not None and self.cooldown.until > now:
            return self.cooldown.until
        return None


class MonitorState(RootModel[dict[str, ModelMonitorState]]):
    root: dict[str, ModelMonitorState] = Field(default_factory=dict)

    def of(self, name: str) -> ModelMonitorState:
        return self.root.get(name) or ModelMonitorState()


def monitor_file(logs_dir: Path, *,
                 on_recover: Callable[[Recovery], None] | None = None) -> StateFile[MonitorState]:
    return StateFile(Path(logs_dir) / STATE_FILE, MonitorState, empty=MonitorState,
                     on_recover=on_recover,
                     rebuilt_description=lambda _: "empty; the next check finds every verdict")


def read_state(logs_dir: Path, *,
               on_recover: Callable[[Recovery], None] | None = None) -> MonitorState:
    """The monitor's per-model state, from any process."""
    return monitor_file(logs_dir, on_recover=on_recover).read()
