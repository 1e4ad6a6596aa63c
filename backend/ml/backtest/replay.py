"""Run a backtest: the day-0 world once, then each policy's days in its own copy of it.

Per policy and day it keeps the check's live score and verdict of each model (None when the
check had no score: no version, or too few fresh rows), the fits the day took, and at the
end the alerts the policy's history holds, by kind. CPU-seconds are this process's CPU time
plus its child processes' (the training pool's workers, live or ended), measured around
each policy; the day-0 build is measured apart, since every policy shares it.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from backend.ml.backtest.policies import (
    ESTIMATE_MISSING,
    Policy,
    available,
    run_day,
)
from backend.ml.backtest.world import World, WorldSpec, build_base, copy_world
from backend.ml.config import Settings
from backend.ml.fleet import specs

DayFn = Callable[[Policy, int, int], None]


@dataclass(frozen=True)
class Options:
    """One backtest: `days` simulated days from day 0, `scenario` from day `at` on."""

    days: int
    policies: tuple[Policy, ...]
    scenario: str | None = None
    at: int | None = None
    models: tuple[str, ...] | None = None  # None: the whole fleet
    world: WorldSpec = field(default_factory=WorldSpec)

    def validate(self) -> None:
        """ValueError, one line, for options a backtest cannot run with."""
        from backend.ml.data.synthetic import get_scenario

        if self.days < 1:
            raise ValueError(f"--days must be at least 1, not {self.days}")
        if self.scenario is not None:
            get_scenario(self.scenario)
        if self.at is not None:
            if self.scenario is None:
                raise ValueError("--at needs --scenario (the day the scenario begins)")
            if not 0 <= self.at < self.days:
                raise ValueError(f"--at {self.at} is beyond the backtest: days run from 0 "
                                 f"to {self.days - 1} (--days {self.days})")
        if not self.policies:
            raise ValueError("--policies needs at least one policy")
        if self.models is not None:
            specs.parse_names(list(self.models))
        if self.world.shipments_per_day is not None and self.world.shipments_per_day < 1:
            raise ValueError("--shipments-per-day must be at least 1")

    @property
    def scenario_day(self) -> int | None:
        if self.scenario is None:
            return None
        return self.at if self.at is not None else self.days // 2


def cpu_seconds() -> float:
    """CPU time of this process and of its children, live (the pool's workers) or ended."""
    import psutil

    total = time.process_time()
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    total += ended.ru_utime + ended.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:  # ended between the listing and the reading
            continue
        total += times.user + times.system
    return total


def run_backtest(options: Options, base: Settings, *, workdir: Path | None = None,
                 on_day: DayFn | None = None, keep_state: bool = False) -> dict[str, Any]:
    """Run it; the backtest's document (what `report` writes as backtest.json)."""
    options.validate()
    root = Path(workdir or tempfile.mkdtemp(prefix="backtest-"))
    started, wall = datetime.now(UTC), time.perf_counter()
    models = list(options.models) if options.models else None
    try:
        cpu = cpu_seconds()
        day0 = build_base(root / "day0", base, options.world, models)
        setup = {"wall_seconds": round(time.perf_counter() - wall, 2),
                 "cpu_seconds": round(cpu_seconds() - cpu, 2),
                 "status": day0["status"], "promoted": day0.get("promoted", [])}
        results: dict[str, Any] = {}
        for policy in options.policies:
            if not available(policy):
                results[policy.value] = {"available": False, "reason": ESTIMATE_MISSING}
                continue
            world = copy_world(root / "day0", root / policy.value, base, options.world)
            try:
                # One thread per scoring: OpenMP teams on a busy 2-core machine made each
                # check's predictions 4x slower (0.65 s against 0.17 s a model). A training
                # run sets its own limit inside, as in the service.
                with threadpool_limits(limits=1):
                    results[policy.value] = replay_policy(policy, world, options, on_day)
            finally:
                world.close()
    finally:
        if not keep_state:
            shutil.rmtree(root, ignore_errors=True)
    names = models or list(specs.MODEL_NAMES)
    return {
        "created_at": started.isoformat(timespec="seconds"),
        "days": options.days, "scenario": options.scenario, "at": options.scenario_day,
        "day0": options.world.day0.isoformat(), "history_days": options.world.history_days,
        "seed": options.world.seed, "shipments_per_day": options.world.shipments_per_day,
        "models": names,
        "thresholds": {n: base.threshold_for(specs.get_spec(n)) for n in names},
        "setup": setup, "policies": results,
        "wall_seconds": round(time.perf_counter() - wall, 2),
    }


def replay_policy(policy: Policy, world: World, options: Options,
                  on_day: DayFn | None) -> dict[str, Any]:
    """Every day of one policy; its days and its summary."""
    names = list(options.models) if options.models else list(specs.MODEL_NAMES)
    thresholds = {n: world.settings.threshold_for(specs.get_spec(n)) for n in names}
    start_cpu, start_wall = cpu_seconds(), time.perf_counter()
    shift = options.scenario_day
    days: list[dict[str, Any]] = []
    for day in range(options.days):
        date = options.world.day0 + timedelta(days=day)
        world.simulate_day(options.scenario if shift is not None and day >= shift else None)
        world.clock.set_day(date)
        outcome = run_day(policy, world, models=list(options.models) if options.models
                          else None)
        checked = outcome.check["models"]
        days.append({
            "day": day, "date": date.isoformat(), "checked_at": outcome.check["timestamp"],
            "fits": outcome.fits,
            "scores": {n: checked.get(n, {}).get("live_score") for n in names},
            "verdicts": {n: checked.get(n, {}).get("verdict") for n in names},
        })
        if on_day is not None:
            on_day(policy, day, options.days)
    alerts = world.services.history.alerts(limit=10**9, archived=True)
    scored = [(n, s) for d in days for n, s in d["scores"].items() if s is not None]
    return {
        "available": True,
        "summary": {
            "mean_live_score": (round(sum(s for _, s in scored) / len(scored), 6)
                                if scored else None),
            "days_below_threshold": sum(s < thresholds[n] for n, s in scored),
            "retrains": sum(d["fits"] for d in days),
            "cpu_seconds": round(cpu_seconds() - start_cpu, 2),
            "wall_seconds": round(time.perf_counter() - start_wall, 2),
            "alerts": dict(sorted(Counter(str(a.get("kind")) for a in alerts).items())),
        },
        "days": days,
    }
