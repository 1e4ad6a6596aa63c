"""Run a backtest: the day-0 world once, then each policy's days in its own copy of it.

Per policy and day it keeps the check's live score and verdict of each model (None when the
check had no score: no version, or too few fresh labelled rows), the models that had only an
estimate that day, the fits the day took, and at the end the alerts the policy's history
holds, by kind. CPU-seconds are a process's CPU time plus its child processes' (the training
pool's workers, live or ended), measured around each policy; the day-0 build is measured
apart, since every policy shares it.

Policies share nothing after day 0, so with `jobs` > 1 they run side by side, each in its
own process (spawned: a forked copy of a process that already ran OpenMP fits can hang) with
its share of the cores: each process sees cores // jobs CPUs (LOKY_MAX_CPU_COUNT), so its
runner's pool and fit threads are sized as the service sizes them on that many cores. It
does not split one policy's days across processes: a day needs the day before.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
from threadpoolctl import threadpool_limits

from backend.ml.backtest.policies import (
    ESTIMATED_VERDICTS,
    Policy,
    policy_settings,
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


def default_jobs(policies: Sequence[Policy]) -> int:
    """A process per policy, at most one per core."""
    return max(1, min(len(policies), int(joblib.cpu_count())))


def run_backtest(options: Options, base: Settings, *, workdir: Path | None = None,
                 on_day: DayFn | None = None, keep_state: bool = False,
                 jobs: int = 1) -> dict[str, Any]:
    """Run it; the backtest's document (what `report` writes as backtest.json). `jobs`
    policies run at once, each in its own process (1: all in this one, in turn)."""
    options.validate()
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, not {jobs}")
    root = Path(workdir or tempfile.mkdtemp(prefix="backtest-"))
    started, wall = datetime.now(UTC), time.perf_counter()
    models = list(options.models) if options.models else None
    cpu = cpu_seconds()
    try:
        day0 = build_base(root / "day0", base, options.world, models)
        setup = {"wall_seconds": round(time.perf_counter() - wall, 2),
                 "cpu_seconds": round(cpu_seconds() - cpu, 2),
                 "status": day0["status"], "promoted": day0.get("promoted", [])}
        jobs = min(jobs, len(options.policies))
        if jobs == 1:
            done = {p: replay_in_copy(p, root, base, options, on_day)
                    for p in options.policies}
        else:
            done = _replay_side_by_side(options.policies, root, base, options, on_day, jobs)
        results = {p.value: done[p] for p in options.policies}
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
        "setup": setup, "policies": results, "jobs": jobs, "cores": int(joblib.cpu_count()),
        "wall_seconds": round(time.perf_counter() - wall, 2),
        "cpu_seconds": round(cpu_seconds() - cpu, 2),
    }


def replay_in_copy(policy: Policy, root: Path, base: Settings, options: Options,
                   on_day: DayFn | None) -> dict[str, Any]:
    """One policy's days in its own copy of the day-0 world under `root`."""
    world = copy_world(root / "day0", root / policy.value, policy_settings(policy, base),
                       options.world)
    try:
        # One thread per scoring: OpenMP teams on a busy 2-core machine made each check's
        # predictions 4x slower (0.65 s against 0.17 s a model). A training run sets its own
        # limit inside, as in the service.
        with threadpool_limits(limits=1):
            return replay_policy(policy, world, options, on_day)
    finally:
        world.close()


# ---- side by side: one process a policy ------------------------------------------------------

_progress: Any = None  # in a policy's process: the queue its days are reported on


def _start_policy_process(progress: Any, cores: int, log_file: str | None,
                          disabled: int) -> None:
    """A policy process's start: its share of the cores, and the parent's log."""
    global _progress
    _progress = progress
    # Read by joblib.cpu_count() at each call: the runner's pool and fit threads follow it.
    os.environ["LOKY_MAX_CPU_COUNT"] = str(cores)
    logging.disable(disabled)
    if log_file is not None:
        from backend.ml.logsetup import configure_logging

        configure_logging(Path(log_file).parent, console=False)
    else:  # the parent logs nowhere (a test, the bench): neither does this process
        logging.getLogger("backend").addHandler(logging.NullHandler())


def _report_day(policy: Policy, day: int, days: int) -> None:
    _progress.put((policy.value, day, days))


def _replay_in_process(policy: Policy, root: Path, base: Settings,
                       options: Options) -> dict[str, Any]:
    return replay_in_copy(policy, root, base, options, _report_day)


def _parent_log_file() -> str | None:
    for handler in logging.getLogger("backend").handlers:
        if isinstance(handler, logging.FileHandler):
            return str(handler.baseFilename)
    return None


def _replay_side_by_side(policies: Sequence[Policy], root: Path, base: Settings,
                         options: Options, on_day: DayFn | None,
                         jobs: int) -> dict[Policy, dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    progress = context.Queue()

    def relay() -> None:  # the policies' days, to `on_day` in this process
        while (item := progress.get()) is not None:
            if on_day is not None:
                on_day(Policy(item[0]), item[1], item[2])

    relaying = threading.Thread(target=relay, name="backtest-progress", daemon=True)
    relaying.start()
    cores = max(1, int(joblib.cpu_count()) // jobs)
    try:
        with ProcessPoolExecutor(
                max_workers=jobs, mp_context=context, initializer=_start_policy_process,
                initargs=(progress, cores, _parent_log_file(),
                          logging.root.manager.disable)) as pool:
            # In the order given: the policy that trains most (nightly) starts first.
            futures = {p: pool.submit(_replay_in_process, p, root, base, options)
                       for p in policies}
            return {p: f.result() for p, f in futures.items()}
    finally:
        progress.put(None)
        relaying.join()
        progress.close()
        progress.join_thread()


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
            # Models the check could only estimate (too few labelled fresh rows yet), and
            # the estimates: never under "scores", an estimate is no measurement
            "estimated_only": [n for n in names
                               if checked.get(n, {}).get("verdict") in ESTIMATED_VERDICTS],
            "estimates": {n: checked.get(n, {}).get("estimated_value") for n in names},
        })
        if on_day is not None:
            on_day(policy, day, options.days)
    alerts = world.services.history.alerts(limit=10**9, archived=True)
    scored = [(n, s) for d in days for n, s in d["scores"].items() if s is not None]
    estimated = [d["estimates"][n] for d in days for n in d["estimated_only"]
                 if d["estimates"][n] is not None]
    return {
        "available": True,
        "summary": {
            "mean_live_score": (round(sum(s for _, s in scored) / len(scored), 6)
                                if scored else None),
            "days_below_threshold": sum(s < thresholds[n] for n, s in scored),
            "retrains": sum(d["fits"] for d in days),
            # model-days with only an estimate: how long this policy's models flew blind
            "estimated_only_days": sum(len(d["estimated_only"]) for d in days),
            "mean_estimated_score": (round(sum(estimated) / len(estimated), 6)
                                     if estimated else None),
            "cpu_seconds": round(cpu_seconds() - start_cpu, 2),
            "wall_seconds": round(time.perf_counter() - start_wall, 2),
            "alerts": dict(sorted(Counter(str(a.get("kind")) for a in alerts).items())),
        },
        "days": days,
    }
