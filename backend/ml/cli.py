"""The command line: `python -m backend.ml <command>`.

Every command reads the same settings as the service (environment variables). Errors
are one line naming the problem, exit code 2; a training run with a failed model exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine, make_url

from backend.ml import data, datagen, specs
from backend.ml.config import Settings, get_settings

EXIT_FAILED_RUN = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database)
    return None


def open_readonly(settings: Settings) -> Engine:
    path = _sqlite_file(settings.DATABASE_URL)
    if path is not None and not path.exists():
        raise CommandError(f"database file {path} does not exist; create it with "
                           "`python -m backend.ml init-db`")
    return data.readonly_engine(settings.DATABASE_URL)


def _progress_printer(total: int, *, stream: Any = sys.stderr) -> Callable[[Any], None]:
    """A per-model progress bar on a terminal; plain lines when piped."""
    done = 0
    started = time.perf_counter()

    def report(result: Any) -> None:
        nonlocal done
        done += 1
        width = 20
        bar = "#" * (width * done // total) + "-" * (width - width * done // total)
        score = "failed" if not result.ok else f"{result.metric}={result.score:.3f}"
        flag = "" if result.passed else "  BELOW THRESHOLD" if result.ok else \
            f"  ({result.error})"
        stream.write(f"[{bar}] {done:2d}/{total} {result.name:<24} {score}{flag} "
                     f"({time.perf_counter() - started:.1f}s)\n")
        stream.flush()

    return report


def cmd_init_db(args: argparse.Namespace, settings: Settings) -> int:
    path = _sqlite_file(settings.DATABASE_URL)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = data.writable_engine(settings.DATABASE_URL)
    if args.if_missing and datagen.database_has_data(engine):
        print(f"database {data.describe_url(settings.DATABASE_URL)} already has data; "
              "leaving it as it is")
        return 0
    started = time.perf_counter()
    end = date.fromisoformat(args.end) if args.end else None
    counts = datagen.init_db(engine, days=args.days, seed=args.seed, force=args.force, end=end,
                             shipments_per_day=args.shipments_per_day,
                             progress=lambda t, n: print(f"  {t}: {n:,} rows", flush=True))
    print(f"created {data.describe_url(settings.DATABASE_URL)}: {sum(counts.values()):,} rows "
          f"in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    if args.days < 1:
        raise CommandError("--days must be at least 1")
    if args.drift:
        datagen.get_scenario(args.drift)
    engine = data.writable_engine(settings.DATABASE_URL)
    counts = datagen.simulate(engine, days=args.days, seed=args.seed, scenario=args.drift)
    note = ""
    if args.drift:
        scenario = datagen.get_scenario(args.drift)
        note = f" under {scenario.name} ({scenario.description}); hurts " + ", ".join(
            scenario.hurts)
    print(f"appended {args.days} day(s){note}: " + ", ".join(
        f"{t} +{n:,}" for t, n in counts.items()))
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from backend.ml import trainer
    from backend.ml.results import summarize

    names = specs.parse_names(args.models)
    chosen = [specs.get_spec(n) for n in names]
    engine = open_readonly(settings)
    started = time.perf_counter()
    timestamp = datetime.now(UTC).isoformat()
    tables = trainer.load_tables(engine, chosen)
    thresholds = {s.name: specs.threshold_for(s, settings.MIN_ACCURACY_THRESHOLD,
                                              settings.threshold_overrides()) for s in chosen}
    show = sys.stderr.isatty() or not args.json
    with trainer.parallel_backend(settings.TRAINING_BACKEND, settings.DASK_SCHEDULER_ADDRESS):
        results = trainer.train_many(chosen, tables, thresholds=thresholds,
                                     n_jobs=settings.TRAINING_N_JOBS,
                                     on_result=_progress_printer(len(chosen)) if show else None)
    summary = summarize(results, timestamp=timestamp,
                        duration_seconds=time.perf_counter() - started)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['status']}: {summary['successful_models']}/{summary['models_trained']}"
              f" models trained in {summary['duration_seconds']:.1f}s, "
              f"average score {summary['avg_accuracy']}")
    return 0 if summary["status"] == "success" else EXIT_FAILED_RUN


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from backend.ml import bench

    return bench.main(args, settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend.ml",
                                     description="Train, check and manage the 17 models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init-db", help="create and fill the synthetic logistics database")
    p.add_argument("--days", type=int, default=730, help="days of history (default 730)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--end", help="last day YYYY-MM-DD (default yesterday)")
    p.add_argument("--shipments-per-day", type=int, default=datagen.SHIPMENTS_PER_DAY)
    p.add_argument("--force", action="store_true", help="replace a database that has data")
    p.add_argument("--if-missing", action="store_true",
                   help="do nothing when the database already has data")
    p.set_defaults(func=cmd_init_db)

    p = sub.add_parser("simulate", help="append days after the newest row (tomorrow's data)")
    p.add_argument("--days", type=int, required=True)
    p.add_argument("--drift", choices=sorted(datagen.SCENARIOS), help="a drift scenario")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train models now")
    p.add_argument("--models", help="comma-separated model names (default: all 17)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="time the training cycle at several data sizes")
    p.add_argument("--json", action="store_true")
    p.add_argument("--sizes", default="default,300000,1000000",
                   help="comma list: 'default' (the configured database) or shipment counts")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one size
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
        result: int = args.func(args, settings)
        return result
    except (CommandError, specs.UnknownModelError, data.DataError, ValueError,
            datagen.DatabaseExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
