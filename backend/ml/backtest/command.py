"""`python -m backend.ml backtest`: rehearse retraining policies over simulated days.

Follows `backend.ml.cli`: options checked before anything runs, a problem the user can fix
raised as ValueError (the CLI prints it on one line and exits 2), the ML libraries imported
inside the command. The rehearsal's own log (its alerts, its runs) goes to backtest.log
beside its results, never into the service's log: those alerts are not the plant's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from backend.ml.config import Settings

DEFAULT_POLICIES = "nightly,on_degrade,on_estimate,never"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `backtest` subcommand on the CLI's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "backtest", help="rehearse retraining policies over simulated days, each in its own "
                         "temporary state, through the real check, runner and store")
    p.add_argument("--days", type=int, default=365, help="simulated days (default 365)")
    p.add_argument("--scenario", help="a drift scenario that begins on day --at")
    p.add_argument("--at", type=int, help="the day the scenario begins (default days // 2)")
    p.add_argument("--policies", default=DEFAULT_POLICIES,
                   help=f"comma list (default {DEFAULT_POLICIES})")
    p.add_argument("--models", help="comma list of models (default: the whole fleet)")
    p.add_argument("--shipments-per-day", type=int,
                   help="shipments a simulated day (default: the world's)")
    p.add_argument("--history-days", type=int, default=730,
                   help="days of data before day 0 (default 730)")
    p.add_argument("--out", help="folder for backtest.json and backtest.svg "
                                 "(default LOGS_DIR/backtests/<timestamp>)")
    p.add_argument("--jobs", type=int,
                   help="policies run at once, each in its own process with its share of the "
                        "cores (default: one a core, at most one a policy)")
    p.add_argument("--json", action="store_true", help="print the document as JSON")
    p.set_defaults(func=cmd_backtest)
    return p


def options_from(args: argparse.Namespace) -> Any:
    """The backtest's options from the arguments; ValueError (one line) when they are bad."""
    from backend.ml.backtest.policies import parse_policies
    from backend.ml.backtest.replay import Options
    from backend.ml.backtest.world import WorldSpec
    from backend.ml.fleet import specs

    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, not {args.jobs}")
    if args.history_days < 60:
        raise ValueError(f"--history-days must be at least 60, not {args.history_days}")
    models = tuple(specs.parse_names(args.models)) if args.models else None
    options = Options(days=args.days, policies=tuple(parse_policies(args.policies)),
                      scenario=args.scenario, at=args.at, models=models,
                      world=WorldSpec(history_days=args.history_days,
                                      shipments_per_day=args.shipments_per_day))
    options.validate()
    return options


class DayPrinter:
    """The backtest's days on stderr: one bar over every policy's days, each policy's day,
    and an estimate of the time left. Redrawn in place on a terminal; when piped, a line at
    each quarter of a policy's days (a log, not a screen).

    The time left is each policy's own pace so far (its seconds a day since its first day)
    times its days left, the slowest running policy deciding when `jobs` run at once; the
    days of a policy without a pace yet (not started, or one day in) count at the mean pace
    of the others. A guess: a policy's
    days grow dearer as its fresh rows grow."""

    def __init__(self, policies: int, jobs: int, stream: Any = sys.stderr,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.stream, self.live, self.clock = stream, stream.isatty(), clock
        self.policies, self.jobs = policies, max(1, jobs)
        self.started = clock()
        # policy: (its days done, when), at its first report and at its latest
        self.first: dict[str, tuple[int, float]] = {}
        self.last: dict[str, tuple[int, float]] = {}
        self.done: dict[str, int] = {}

    def seconds_left(self, days: int) -> float | None:
        paces = {p: (self.last[p][1] - at) / (self.last[p][0] - done)
                 for p, (done, at) in self.first.items() if self.last[p][0] > done}
        if not paces:
            return None
        left = {p: paces[p] * (days - self.done[p]) for p in paces}
        # days of policies without a pace yet (not started, or one day in), at the mean pace
        waiting = sum(days - d for p, d in self.done.items() if p not in paces) + (
            self.policies - len(self.done)) * days
        unseen = waiting * sum(paces.values()) / len(paces)
        if self.jobs == 1:
            return sum(left.values()) + unseen
        return max(max(left.values()), (sum(left.values()) + unseen) / self.jobs)

    def __call__(self, policy: Any, day: int, days: int) -> None:
        from backend.ml.cli_progress import bar

        now, name = self.clock(), policy.value
        self.done[name] = done = day + 1
        self.first.setdefault(name, (done, now))
        self.last[name] = (done, now)
        total = sum(self.done.values())
        left = self.seconds_left(days)
        eta = ("" if left is None else f", about {left:.0f} s left" if left < 120
               else f", about {left / 60:.0f} min left")
        each = " ".join(f"{p} {d}/{days}" for p, d in self.done.items())
        line = (f"{bar(total, days * self.policies)} {each} "
                f"({now - self.started:.0f}s{eta})")
        if self.live:
            self.stream.write(f"\r{line}\x1b[K" + ("\n" if total == days * self.policies
                                                   else ""))
        elif done == days or done % max(1, days // 4) == 0:
            self.stream.write(line + "\n")
        self.stream.flush()


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from backend.ml.backtest import report
    from backend.ml.backtest.replay import default_jobs, run_backtest
    from backend.ml.logsetup import configure_logging

    options = options_from(args)
    out = Path(args.out) if args.out else report.default_out(settings.LOGS_DIR)
    configure_logging(out, console=False)
    jobs = min(args.jobs or default_jobs(options.policies), len(options.policies))
    show = sys.stderr.isatty() or not args.json
    document = run_backtest(options, settings, jobs=jobs,
                            on_day=DayPrinter(len(options.policies), jobs) if show else None)
    json_path, svg_path = report.write(document, out)
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    print(report.table(document))
    print(f"setup (day 0: data and first training) {document['setup']['wall_seconds']:.1f} s; "
          f"total {document['wall_seconds']:.1f} s wall, {document['cpu_seconds']:.1f} "
          f"CPU-seconds ({document['jobs']} policies at once on {document['cores']} cores)")
    print(f"wrote {json_path} and {svg_path}")
    return 0
