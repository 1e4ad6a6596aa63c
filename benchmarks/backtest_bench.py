"""Wall time and CPU-seconds of a policy backtest, per policy and per simulated day.

    .venv/bin/python benchmarks/backtest_bench.py [--days 365] [--policies ...]
        [--models a,b] [--shipments-per-day N] [--history-days 730] [--scenario S --at D]
        [--jobs N] [--out DIR]

Runs the real backtest (`backend.ml.backtest.replay.run_backtest`, what `python -m
backend.ml backtest` runs) on the default world unless told otherwise, and prints the day-0
setup, each policy's wall and CPU seconds, its seconds a day, and the total. `--jobs`
policies run at once, one process each (default: one a core). With fewer `--days` than 365
it also prints the 365-day figure extrapolated linearly from each policy's seconds a day
(said so on the line: the check's cost grows with the fresh rows a version that is not
retrained is scored on, so for `never` the extrapolation is a lower bound), and the wall
time that follows when `--jobs` policies share the cores. Asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.ml.backtest import report  # noqa: E402
from backend.ml.backtest.policies import parse_policies  # noqa: E402
from backend.ml.backtest.replay import (  # noqa: E402
    Options,
    cpu_seconds,
    default_jobs,
    run_backtest,
)
from backend.ml.backtest.world import WorldSpec  # noqa: E402
from backend.ml.config import Settings  # noqa: E402
from backend.ml.fleet import specs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--policies", default="nightly,on_degrade,on_estimate,never")
    parser.add_argument("--models")
    parser.add_argument("--shipments-per-day", type=int)
    parser.add_argument("--history-days", type=int, default=730)
    parser.add_argument("--scenario")
    parser.add_argument("--at", type=int)
    parser.add_argument("--jobs", type=int, help="policies at once (default: one a core)")
    parser.add_argument("--out", help="also write backtest.json and backtest.svg here")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the rehearsal's alerts are not the bench's output
    options = Options(days=args.days, policies=tuple(parse_policies(args.policies)),
                      scenario=args.scenario, at=args.at,
                      models=tuple(specs.parse_names(args.models)) if args.models else None,
                      world=WorldSpec(history_days=args.history_days,
                                      shipments_per_day=args.shipments_per_day))
    jobs = args.jobs or default_jobs(options.policies)
    started, cpu = time.perf_counter(), cpu_seconds()
    done = run_backtest(options, Settings(), jobs=jobs, on_day=lambda p, d, n: print(
        f"  {p.value} day {d + 1}/{n} at {time.perf_counter() - started:.0f} s",
        file=sys.stderr) if (d + 1) % max(1, n // 10) == 0 else None)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    if args.out:
        report.write(done, Path(args.out))
    models = len(done["models"])
    print(f"world: {args.history_days} days of history, "
          f"{args.shipments_per_day or 'default'} shipments a day, {models} models, "
          f"{args.days} days, {done['jobs']} policies at once on {done['cores']} cores")
    setup = done["setup"]
    print(f"{'day-0 setup':<12} wall {setup['wall_seconds']:8.1f} s  "
          f"CPU {setup['cpu_seconds']:8.1f} s")
    per_policy: list[float] = []  # each policy's 365-day wall seconds, extrapolated
    cpu_year = setup["cpu_seconds"]  # and the CPU-seconds of the whole year
    for name, result in done["policies"].items():
        if not result.get("available"):
            print(f"{name:<12} {result['reason']}")
            continue
        s = result["summary"]
        per_day = s["wall_seconds"] / args.days
        per_policy.append(per_day * 365)
        cpu_year += s["cpu_seconds"] / args.days * 365
        print(f"{name:<12} wall {s['wall_seconds']:8.1f} s  CPU {s['cpu_seconds']:8.1f} s  "
              f"{per_day:6.2f} s a day  {s['cpu_seconds'] / args.days:6.2f} CPU-s a day  "
              f"retrains {s['retrains']}  estimated-only model-days "
              f"{s.get('estimated_only_days')}  mean live {s['mean_live_score']}")
    print(f"{'total':<12} wall {wall:8.1f} s  CPU {cpu:8.1f} s")
    if args.days != 365 and per_policy:
        # side by side, the longest policy or the cores' share of all, whichever is longer
        side = max(max(per_policy), sum(per_policy) / done["jobs"])
        print(f"365 days extrapolated linearly from {args.days}: about "
              f"{setup['wall_seconds'] + side:.0f} s wall with {done['jobs']} at once "
              f"({setup['wall_seconds'] + sum(per_policy):.0f} s one after another); a lower "
              f"bound: a check's cost grows with its fresh rows")
        # On a shared machine the wall time says more about the neighbours than about the
        # backtest; the CPU-seconds over the cores are what it needs of free cores.
        print(f"365 days from CPU: about {cpu_year:.0f} CPU-s, so at least "
              f"{cpu_year / done['cores']:.0f} s wall on {done['cores']} free cores")


if __name__ == "__main__":
    main()
