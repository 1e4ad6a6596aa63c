"""One policy's private world: its own database, models, logs and signing key in a
temporary folder, the service's parts built on them, and a simulated clock.

The database is generated once per backtest with a fixed seed and `history_days` of rows
ending the day before day 0; the fleet is trained and promoted once at day 0 through the
real runner. Every policy then starts from a copy of that folder, so they differ only in
what they do from day 0 on (and the day-0 training is paid once, not once per policy).

The clock: the check reads its time and waits its retrain backoff through a clock
(`steps.WallClock`); `SimClock` is that clock at the simulated day's hour, its waits
moving the simulated time on at once. The alerts' cooldown reads the same time. Run ids and
the history's own stamps stay on the real clock: nothing decides anything from them.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.ml.config import Settings
from backend.ml.monitoring.check import Monitor
from backend.ml.monitoring.steps import WallClock
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

SEED = 42
# Day 0 is fixed, so a backtest is the same whatever day it is run on.
DAY0 = date(2026, 1, 1)
HISTORY_DAYS = 730
CHECK_HOUR = time(1, 0)  # UTC: after the day's rows have landed


class SimClock(WallClock):
    """The simulated time: set to each day's check hour; a wait moves it on at once."""

    def __init__(self, start: datetime) -> None:
        self.at = start

    def now(self) -> datetime:
        return self.at

    def timestamp(self) -> float:
        return self.at.timestamp()

    def monotonic(self) -> float:
        return self.at.timestamp()

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        self.at += timedelta(seconds=max(0.0, seconds))
        return stop.is_set()

    def set_day(self, day: date) -> None:
        """The check hour of the morning after `day` (its rows are in)."""
        self.at = datetime.combine(day + timedelta(days=1), CHECK_HOUR, tzinfo=UTC)


@dataclass(frozen=True)
class WorldSpec:
    """What the synthetic world of a backtest is: the same for every policy."""

    history_days: int = HISTORY_DAYS
    shipments_per_day: int | None = None  # None: the generator's default
    seed: int = SEED
    day0: date = DAY0

    def generator_options(self) -> dict[str, Any]:
        return ({} if self.shipments_per_day is None
                else {"shipments_per_day": self.shipments_per_day})


def settings_in(root: Path, base: Settings) -> Settings:
    """`base` with every path of state pointing into `root`; no scheduler, no delivery."""
    return base.model_copy(update={
        "DATABASE_URL": f"sqlite:///{root / 'logistics.db'}",
        "MODELS_DIR": root / "models", "LOGS_DIR": root / "logs", "HISTORY_FILE": None,
        "MODEL_SIGNING_KEY": None, "MODEL_SIGNING_KEY_FILE": root / "keys" / "signing.key",
        "SCHEDULER_ENABLED": False, "SMTP_HOST": None, "ALERT_WEBHOOK_URL": None,
        "ALERT_EMAIL_TO": ""})


class World:
    """The service's parts on one policy's folder, on the simulated clock."""

    def __init__(self, root: Path, base: Settings, spec: WorldSpec) -> None:
        from backend.ml.alerts.service import COOLDOWN_FILE, Alerts

        self.root, self.spec = root, spec
        self.settings = settings_in(root, base)
        self.clock = SimClock(datetime.combine(spec.day0, CHECK_HOUR, tzinfo=UTC))
        history = Services.from_settings(self.settings).history
        # The service's alerts, cooldown and all, on the simulated time, delivering nowhere.
        alerts = Alerts(history, cooldown_seconds=self.settings.ALERT_COOLDOWN_SECONDS,
                        channels=[], state_path=self.settings.LOGS_DIR / COOLDOWN_FILE,
                        clock=self.clock.timestamp)
        # The store lives all the backtest long: it keeps the models it loaded
        self.services = services = Services(self.settings, history, alerts=alerts,
                                            keep_loaded=True)
        self.runner = Runner(services, clock=self.clock)
        self._engine: Engine | None = None

    def monitor(self, *, retrain: bool) -> Monitor:
        return Monitor(self.runner, clock=self.clock, retrain=retrain)

    def simulate_day(self, scenario: str | None) -> None:
        """Append the next day's rows (under `scenario` when given)."""
        from backend.ml.data import loading, synthetic

        if self._engine is None:
            self._engine = loading.writable_engine(self.settings.DATABASE_URL)
        synthetic.simulate(self._engine, days=1,
                           seed=self.spec.seed, scenario=scenario,
                           **self.spec.generator_options())

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        self.runner.close()
        self.services.alerts.flush(5.0)


def build_base(root: Path, base: Settings, spec: WorldSpec,
               models: list[str] | None) -> dict[str, Any]:
    """Generate the database and train the fleet (or `models`) once at day 0 in `root`;
    the day-0 run's summary. The real runner does it, as the service's first start does."""
    from backend.ml.data import loading, synthetic

    root.mkdir(parents=True, exist_ok=True)
    settings = settings_in(root, base)
    synthetic.init_db(loading.writable_engine(settings.DATABASE_URL), days=spec.history_days,
                      end=spec.day0 - timedelta(days=1), seed=spec.seed,
                      **spec.generator_options())
    world = World(root, base, spec)
    try:
        return world.runner.run(trigger="daily", models=models, actor="scheduler")
    finally:
        world.close()


def copy_world(base_root: Path, root: Path, base: Settings, spec: WorldSpec) -> World:
    """A policy's own world: a copy of the day-0 folder."""
    shutil.copytree(base_root, root)
    for lock in (root / "logs").glob("*.lock"):
        lock.unlink(missing_ok=True)  # a copied lock file is not a held lock, but be tidy
    return World(root, base, spec)
