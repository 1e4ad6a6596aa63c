"""The command line: `python -m backend.ml <command>`.

Every command reads the same settings as the service (environment variables). Errors
are one line naming the problem, exit code 2; a training run with a failed model exits 1.
A write the system refuses (disk full, read-only file system, no permission, quota) is
such an error too: one line naming the file, and for a run whether it is on record. Log
lines that cannot be written then are dropped, so they cannot bury that line.

Each command imports what it uses inside its function, so a read-only command (`history`,
`backups`) starts without loading pandas, scikit-learn or the database driver.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from backend.ml.cli_progress import CheckPrinter, progress_printer
from backend.ml.config import Settings, describe_invalid, get_settings
from backend.ml.fleet.specs import MODEL_NAMES
from backend.ml.fsio import causes, refused_write

EXIT_FAILED_RUN = 1
EXIT_USAGE = 2
# Errors a user can fix, by module: shown as one line, exit 2. Looked up only in modules
# a command has imported (an exception of a module never imported cannot have been raised).
USER_ERRORS = {
    "backend.ml.fleet.specs": ("UnknownModelError",),
    "backend.ml.data.schema": ("DataError",),
    "backend.ml.data.synthetic": ("DatabaseExistsError",),
    "backend.ml.registry.store": ("StoreError",),
    "backend.ml.registry.signing": ("SigningKeyError",),
    "backend.ml.runs.progress": ("RunInProgressError",),
    "backend.ml.history.document": ("HistoryWriteError",),
    "backend.ml.fsio": ("LockTimeout",),
}


# A write SQLite refused (primary result codes): full, read-only, cannot open, I/O, permission.
REFUSED_SQLITE = {13, 8, 14, 10, 3}
# Warnings of a command (the log it cannot write), shown only when it succeeds: a failing
# command's one line says what went wrong.
_deferred_warnings: list[str] = []


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def user_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [CommandError, ValueError]
    for module_name, names in USER_ERRORS.items():
        module = sys.modules.get(module_name)
        found += [getattr(module, name) for name in names if hasattr(module, name)]
    return tuple(found)


def _log_to_service_log(settings: Settings) -> None:
    """This command's log lines go to the service's log too, not over our output."""
    try:
        from backend.ml.logsetup import configure_logging

        configure_logging(settings.LOGS_DIR, console=False)
    except OSError as exc:
        _deferred_warnings.append(f"warning: not logging to {settings.LOGS_DIR}: {exc}")


def cmd_init_db(args: argparse.Namespace, settings: Settings) -> int:
    from backend.ml.data import loading, synthetic

    path = loading.sqlite_path(settings.DATABASE_URL)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = loading.writable_engine(settings.DATABASE_URL)
    if args.if_missing and synthetic.database_has_data(engine):
        print(f"database {loading.describe_url(settings.DATABASE_URL)} already has data; "
              "leaving it as it is")
        return 0
    started = time.perf_counter()
    end = date.fromisoformat(args.end) if args.end else None
    per_day = args.shipments_per_day or synthetic.SHIPMENTS_PER_DAY
    counts = synthetic.init_db(engine, days=args.days, seed=args.seed, force=args.force, end=end,
                               shipments_per_day=per_day,
                               progress=lambda t, n: print(f"  {t}: {n:,} rows", flush=True))
    print(f"created {loading.describe_url(settings.DATABASE_URL)}: {sum(counts.values()):,} rows "
          f"in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from backend.ml.data import loading, synthetic

    if args.days < 1:
        raise CommandError("--days must be at least 1")
    if args.drift:
        synthetic.get_scenario(args.drift)  # an unknown name is refused before writing
    engine = loading.writable_engine(settings.DATABASE_URL)
    counts = synthetic.simulate(engine, days=args.days, seed=args.seed, scenario=args.drift)
    note = ""
    if args.drift:
        scenario = synthetic.get_scenario(args.drift)
        note = f" under {scenario.name} ({scenario.description}); hurts " + ", ".join(
            scenario.hurts)
    print(f"appended {args.days} day(s){note}: " + ", ".join(
        f"{t} +{n:,}" for t, n in counts.items()))
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from backend.ml.data import ingest, loading

    engine = loading.writable_engine(settings.DATABASE_URL)
    done = ingest.ingest(engine, args.table, Path(args.file))
    print(f"appended {done.rows:,} row(s) to {done.table}"
          f"{' (table created)' if done.created else ''}: {done.first} to {done.last}")
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from backend.ml.fleet import specs
    from backend.ml.runs.runner import Runner
    from backend.ml.runs.services import Services

    names = specs.parse_names(args.models)
    _log_to_service_log(settings)  # training lines go there, whoever started the run
    runner = Runner(Services.from_settings(settings))
    show = sys.stderr.isatty() or not args.json
    summary = runner.run(trigger=args.trigger, models=names, actor="cli",
                         on_result=progress_printer(len(names)) if show else None)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['status']}: {summary['successful_models']}/{summary['models_trained']}"
              f" models trained in {summary['duration_seconds']:.1f}s, "
              f"average score {summary['avg_accuracy']}; run {summary['run_id']}; "
              f"promoted: {', '.join(summary['promoted']) or 'none'}"
              + (f"; unchanged: {', '.join(summary['unchanged'])}"
                 if summary.get("unchanged") else ""))
    return 0 if summary["status"] == "success" else EXIT_FAILED_RUN


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    """Recent runs, newest first; a run of some of the models names them, and a model left
    unchanged (same data and parameters as production) is named too."""
    from backend.ml.fleet.specs import MODEL_NAMES
    from backend.ml.history.document import models_in
    from backend.ml.runs.services import Services

    history = Services.from_settings(settings).history
    records = history.trainings(limit=args.limit)
    if args.json:
        print(json.dumps({"trainings": records, "stats": history.stats()}, indent=2))
        return 0
    for r in records:
        def field(key: str, record: dict[str, Any] = r) -> str:
            value = record.get(key)
            return "-" if value is None else str(value)
        covered = r.get("models") if isinstance(r.get("models"), list) else sorted(models_in(r))
        some = f"  models: {', '.join(map(str, covered))}" if covered and set(
            covered) != set(MODEL_NAMES) else ""
        unchanged = r.get("unchanged") if isinstance(r.get("unchanged"), list) else []
        same = f"  unchanged: {', '.join(map(str, unchanged))}" if unchanged else ""
        print(f"{field('timestamp')[:19]:<20} {field('run_id'):<32} {field('trigger'):<9}"
              f"{field('status'):<12}{field('successful_models'):>3}/"
              f"{field('models_trained'):<3} avg {field('avg_accuracy')}{some}{same}")
    stats = history.stats()
    print(f"{stats.get('total_trainings', 0)} trainings, success rate "
          f"{stats.get('success_rate', 0)}%, last {stats.get('last_training')}")
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    """One check now, as the scheduler runs it every PERFORMANCE_CHECK_INTERVAL seconds
    (degraded models are retrained), its progress on stderr (not with --json when piped)."""
    from backend.ml.logsetup import configure_logging
    from backend.ml.monitoring.check import Monitor
    from backend.ml.runs.runner import Runner
    from backend.ml.runs.services import Services

    configure_logging(settings.LOGS_DIR, console=False)
    printer = CheckPrinter() if sys.stderr.isatty() or not args.json else None
    try:
        entry = Monitor(Runner(Services.from_settings(settings)),
                        on_progress=printer).run_check()
    finally:
        if printer is not None:
            printer.close()
    if args.json:
        print(json.dumps(entry, indent=2, default=str))
        return 0
    print(f"{entry['check_id']} at {entry['timestamp']}")
    for name, result in entry["models"].items():
        live = result.get("live_score")
        drift = result.get("drift", {}).get("top_features") or []
        retrain = result.get("retrain", {})
        outcome = ("" if not retrain else " retrained: recovered" if retrain.get("recovered")
                   else f" retrain: {retrain.get('skipped') or 'not recovered'}")
        score = "" if live is None else f"live {live:.3f} / {result['threshold']:.2f}"
        if "estimated_value" in result:  # labels pending: an estimate, never a live score
            score = (f"estimated {result['estimated_value']:.3f} [{result['estimated_low']:.3f}"
                     f", {result['estimated_high']:.3f}] / {result['threshold']:.2f}")
        drifted = "  drift: " + ", ".join(f for f, _ in drift) if drift else ""
        print(f"  {name:<25}{result['verdict']:<26}{score}{drifted}{outcome}")
    return 0


def cmd_alerts_test(args: argparse.Namespace, settings: Settings) -> int:
    """A test alert through every configured channel, past the cooldown; one line each."""
    from backend.ml.runs.services import Services

    services = Services.from_settings(settings)
    if not services.alerts.channels:
        print("no alert channel is configured (set SMTP_HOST and ALERT_EMAIL_TO, or "
              "ALERT_WEBHOOK_URL)")
        return EXIT_FAILED_RUN
    _log_to_service_log(settings)  # retries are logged as warnings: there, not over our lines
    delivery = services.alerts.send(
        "info", "test", "This is a test alert from the ML training scheduler "
        "(python -m backend.ml alerts test); if you can read it, delivery works.")
    delivery.wait()
    for outcome in delivery.outcomes:
        print(outcome.line())
    return 0 if delivery.ok else EXIT_FAILED_RUN


def cmd_scheduler(args: argparse.Namespace, settings: Settings) -> int:
    """The scheduler without the web server, until SIGINT or SIGTERM. Runs and checks each
    run in a worker process, as under the web server."""
    import signal
    import threading

    from backend.ml.logsetup import configure_logging
    from backend.ml.runs.runner import Runner
    from backend.ml.runs.scheduler import TrainingScheduler
    from backend.ml.runs.services import Services
    from backend.ml.runs.worker import ChildCheck

    log_file = configure_logging(settings.LOGS_DIR)
    runner = Runner(Services.from_settings(settings), isolated=True)
    runner.recover_interrupted()
    scheduler = TrainingScheduler(runner, check=ChildCheck(settings))
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"scheduler running headless; log: {log_file}; Ctrl-C stops it", flush=True)
    scheduler.start()
    done.wait()
    scheduler.stop()
    runner.close()
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from backend.ml.training import bench

    return bench.main(args, settings)


def build_parser() -> argparse.ArgumentParser:
    from backend.ml import cli_registry  # it imports this module's errors
    from backend.ml.backtest.command import add_parser as add_backtest_parser
    from backend.ml.history.document import TRIGGERS

    parser = argparse.ArgumentParser(prog="python -m backend.ml",
                                     description=f"Train, check and manage the "
                                                 f"{len(MODEL_NAMES)} models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init-db", help="create and fill the synthetic logistics database")
    p.add_argument("--days", type=int, default=730, help="days of history (default 730)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--end", help="last day YYYY-MM-DD (default yesterday)")
    p.add_argument("--shipments-per-day", type=int,
                   help="shipments a day (default: the generator's)")
    p.add_argument("--force", action="store_true", help="replace a database that has data")
    p.add_argument("--if-missing", action="store_true",
                   help="do nothing when the database already has data")
    p.set_defaults(func=cmd_init_db)

    p = sub.add_parser("simulate", help="append days after the newest row (tomorrow's data)")
    p.add_argument("--days", type=int, required=True)
    p.add_argument("--drift", help="a drift scenario by name (an unknown name lists them)")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "ingest", help="append a file's rows to a table a model declares; the whole file "
                       "or nothing",
        description="Append the rows of a CSV file (header: the table's columns; Parquet "
                    "too when pyarrow is installed: it is not a dependency) to a table "
                    "a model declares. Rows must be in time order and no older than the "
                    "newest row already in the table; keys must be new. A bad file is "
                    "refused naming its line and column, and nothing is written.")
    p.add_argument("table", help="a declared table, e.g. co2_weekly (EXAMPLE_MODELS)")
    p.add_argument("file", help="a .csv file, or .parquet with pyarrow installed")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("train", help="train models now")
    p.add_argument("--models",
                   help=f"comma-separated model names (default: all {len(MODEL_NAMES)})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--trigger", default="manual", choices=TRIGGERS)
    p.set_defaults(func=cmd_train)

    cli_registry.add_commands(sub)

    p = sub.add_parser("history", help="recent training runs and statistics")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("check", help="check every model on fresh data now; retrain the "
                                     "degraded")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("alerts", help="alert delivery")
    alerts = p.add_subparsers(dest="alerts_command", required=True)
    p = alerts.add_parser("test", help="send a test alert through every configured channel "
                                       "and report each one's outcome")
    p.set_defaults(func=cmd_alerts_test)

    p = sub.add_parser("scheduler", help="run the scheduler headless (no web server)")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser("bench", help="time the training cycle at several data sizes")
    p.add_argument("--json", action="store_true")
    p.add_argument("--sizes", default="default,300000,1000000",
                   help="comma list: 'default' (the configured database) or shipment counts")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one size
    p.set_defaults(func=cmd_bench)

    add_backtest_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"error: {describe_invalid(exc)}", file=sys.stderr)
        return EXIT_USAGE
    logging.raiseExceptions = False  # a log line the disk refuses is dropped, not printed
    try:
        result: int = args.func(args, settings)
    except BrokenPipeError:
        # The reader went away (`... | head`): not an error. Point stdout at /dev/null so
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        line = error_line(exc, settings)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    for warning in _deferred_warnings:
        print(warning, file=sys.stderr)
    return result


def error_line(exc: BaseException, settings: Settings) -> str | None:
    """The one line for an error the user can act on, with the notes a run adds (whether
    it is on record); None for anything else, a bug, whose traceback is shown."""
    refused = refused_write(exc)
    if isinstance(exc, user_errors()):
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    elif refused is not None:
        text = (f"cannot write {refused.filename}: {refused.strerror}" if refused.filename
                else f"{refused.strerror or refused} (writing under {settings.MODELS_DIR} "
                     f"or {settings.LOGS_DIR})")
    elif (database := _refused_database_write(exc, settings)) is not None:
        text = database
    else:
        return None
    notes = [str(note) for note in getattr(exc, "__notes__", None) or []]
    return " ".join("; ".join([text, *notes]).split())  # one line, whatever the texts hold


def _refused_database_write(exc: BaseException, settings: Settings) -> str | None:
    for cause in causes(exc):
        code = getattr(cause, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in REFUSED_SQLITE:
            from backend.ml.data.loading import describe_url, sqlite_path

            where = sqlite_path(settings.DATABASE_URL) or describe_url(settings.DATABASE_URL)
            return f"cannot write the database {where}: {cause}"
    return None
