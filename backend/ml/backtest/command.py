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
    p.add_argument("--json", action="store_true", help="print the document as JSON")
    p.set_defaults(func=cmd_backtest)
    return p


def options_from(args: argparse.Namespace) -> Any:
    """The backtest's options from the arguments; ValueError (one line) when they are bad."""
    from backend.ml.backtest.policies import parse_policies
    from backend.ml.backtest.replay import Options
    from backend.ml.backtest.world import WorldSpec
    from backend.ml.fleet import specs

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
    """A bar for each policy's days on stderr: redrawn in place on a terminal; when piped,
    a line at each quarter of the days (a log, not a screen)."""

    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream, self.live = stream, stream.isatty()
        self.started = time.perf_counter()

    def __call__(self, policy: Any, day: int, days: int) -> None:
        from backend.ml.cli_progress import bar

        done = day + 1
        line = (f"{bar(done, days)} {policy.value:<11} day {done}/{days} "
                f"({time.perf_counter() - self.started:.0f}s)")
        if self.live:
            self.stream.write(f"\r{line}\x1b[K" + ("\n" if done == days else ""))
        elif done == days or done % max(1, days // 4) == 0:
            self.stream.write(line + "\n")
        self.stream.flush()


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from backend.ml.backtest import report
    from backend.ml.backtest.policies import ESTIMATE_MISSING, Policy
    from backend.ml.backtest.replay import run_backtest
    from backend.ml.logsetup import configure_logging

    options = options_from(args)
    out = Path(args.out) if args.out else report.default_out(settings.LOGS_DIR)
    configure_logging(out, console=False)
    if Policy.ON_ESTIMATE in options.policies:
        print(f"note: {ESTIMATE_MISSING}", file=sys.stderr)
    show = sys.stderr.isatty() or not args.json
    document = run_backtest(options, settings, on_day=DayPrinter() if show else None)
    json_path, svg_path = report.write(document, out)
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    print(report.table(document))
    print(f"setup (day 0: data and first training) {document['setup']['wall_seconds']:.1f} s, "
          f"total {document['wall_seconds']:.1f} s")
    print(f"wrote {json_path} and {svg_path}")
    return 0
