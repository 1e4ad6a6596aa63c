"""What defending a promotion costs: the gate for the 17, and the audit over ten years.

gate   generates the default world (730 days) in a temporary folder, trains and promotes the
       17 with a daily run, simulates `--days` more (1: the nightly cycle), trains candidates
       on them, then times the gate for each candidate as a run does it
       (`promote.compare_on_holdout`: production loaded and re-scored on the candidate's
       holdout, reusing the predictions it kept from its own holdout for rows whose features
       are unchanged, the paired bootstrap with `--resamples`, the slices; one thread, as a
       run's own process has), against the second cycle's fits
       and against the whole daily cycle (`Runner.run`: load, fits, save and sign, gate,
       back-ups, promotions), in wall and CPU seconds (CPU of this process and the pool's:
       on a shared machine wall time also counts others' work). Twice: with production
       read ahead, as a run in the service's waiting spare has it (`runs/preload.py`; the
       reading is timed apart, as idle time), and cold, read by the gate itself. Prints
       each model's decision, interval and worst slice.
audit  writes ten years of nightly alias moves for the 17 (with a rollback a month) through
       the store's own audit writer, then times `verify_chain` over all of it and the
       `production_at` lookup (`at=`) at random instants (p50/p99).

    PYTHONPATH=. .venv/bin/python benchmarks/registry_bench.py [gate] [audit] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from backend.ml.backtest.replay import cpu_seconds
from backend.ml.config import Settings
from backend.ml.data import loading, synthetic
from backend.ml.fleet import specs
from backend.ml.history import History
from backend.ml.registry.aliases import AliasMove
from backend.ml.registry.promotion import promotion_decision
from backend.ml.registry.signing import signer_from_file
from backend.ml.registry.store import ModelStore
from backend.ml.registry.verify import verify_chain
from backend.ml.runs.preload import Preload
from backend.ml.runs.promote import compare_on_holdout
from backend.ml.runs.runner import Runner, fit_threads
from backend.ml.runs.services import Services
from backend.ml.training import trainer

YEARS = 10


def settings_for(root: Path, resamples: int) -> Settings:
    key = root / "model_signing.key"
    if not key.exists():
        key.write_text(secrets.token_hex(32))
        key.chmod(0o600)
    return Settings(DATABASE_URL=f"sqlite:///{root / 'bench.db'}", MODELS_DIR=root / "models",
                    LOGS_DIR=root / "logs", MODEL_SIGNING_KEY_FILE=key,
                    PROMOTION_BOOTSTRAP_RESAMPLES=resamples)


def fleet_results(settings: Settings,
                  ) -> tuple[list[trainer.TrainResult], dict[str, Any], float, float]:
    """The 17 fitted on two workers; their wall seconds and CPU seconds (this process and
    the pool's workers: on a shared machine wall time also counts others' work)."""
    tables = trainer.load_tables(loading.readonly_engine(settings.DATABASE_URL),
                                 specs.SPECS.values())
    thresholds = {s.name: settings.threshold_for(s) for s in specs.SPECS.values()}
    started, cpu = time.perf_counter(), cpu_seconds()
    results = list(trainer.train_many(list(specs.SPECS.values()), tables,
                                      thresholds=thresholds, n_jobs=2))
    return results, tables, time.perf_counter() - started, cpu_seconds() - cpu


def bench_gate(root: Path, resamples: int, days: int) -> dict[str, Any]:
    settings = settings_for(root, resamples)
    engine = loading.writable_engine(settings.DATABASE_URL)
    synthetic.init_db(engine, days=730, end=date(2026, 10, 31), seed=42)

    def services(keep_loaded: bool = False) -> Services:
        signer = signer_from_file(settings.MODEL_SIGNING_KEY_FILE)
        return Services(settings, History(settings.history_file),
                        store=ModelStore(settings.MODELS_DIR, signer=signer,
                                         keep_loaded=keep_loaded))
    # The first production set as the service makes it (and keeps its holdout predictions)
    Runner(services()).run(trigger="daily", actor="scheduler")
    synthetic.simulate(engine, days=days, seed=7)
    candidates, tables, fit_seconds, fit_cpu = fleet_results(settings)
    cold = time_gate(services(), candidates, tables)
    # As a run in the service's spare worker: production read while the spare waited
    started, cpu = time.perf_counter(), cpu_seconds()
    preload = Preload.start(services(keep_loaded=True))
    assert preload is not None and preload.wait()
    preload_s, preload_cpu = time.perf_counter() - started, cpu_seconds() - cpu
    warm = time_gate(preload.finish(), candidates, tables)
    # The whole cycle as the service runs it nightly in that spare (load, fits, save and
    # sign, gate, back-ups, promotions, history), on the same rows: what the gate is a
    # share of. Without a spare the gate costs the cold gate's time instead of the warm's.
    preload = Preload.start(services(keep_loaded=True))
    assert preload is not None and preload.wait()
    started, cpu = time.perf_counter(), cpu_seconds()
    Runner(preload.finish()).run(trigger="daily", actor="scheduler")
    cycle_s, cycle_cpu = time.perf_counter() - started, cpu_seconds() - cpu
    shares = {}
    for name, gate in (("cold", cold), ("warm", warm)):
        wall = cycle_s - warm["gate_s"] + gate["gate_s"]
        cpu = cycle_cpu - warm["gate_cpu_s"] + gate["gate_cpu_s"]
        shares[name] = {"gate_s": gate["gate_s"], "gate_cpu_s": gate["gate_cpu_s"],
                        "fits_share": round(gate["gate_s"] / fit_seconds, 3),
                        "fits_cpu_share": round(gate["gate_cpu_s"] / fit_cpu, 3),
                        "cycle_s": round(wall, 2), "cycle_cpu_s": round(cpu, 2),
                        "cycle_share": round(gate["gate_s"] / wall, 3),
                        "cycle_cpu_share": round(gate["gate_cpu_s"] / cpu, 3)}
    return {"resamples": resamples, "days": days, "models": warm["models"],
            "cold_models": cold["models"], "cycle_fit_s": round(fit_seconds, 2),
            "cycle_fit_cpu_s": round(fit_cpu, 2), "preload_s": round(preload_s, 2),
            "preload_cpu_s": round(preload_cpu, 2), **shares}


def time_gate(services: Services, candidates: list[trainer.TrainResult],
              tables: dict[str, Any]) -> dict[str, Any]:
    """Gate each candidate as `save_and_promote` does (without saving), timed in wall and
    CPU seconds, with the threads a run's own process has."""
    settings = services.settings
    rows: list[dict[str, Any]] = []
    gate_seconds = gate_cpu = 0.0
    with threadpool_limits(limits=fit_threads(settings.TRAINING_N_JOBS)):
        for result in candidates:
            if not result.ok:
                rows.append({"model": result.name, "error": result.error})
                continue
            started, cpu = time.perf_counter(), cpu_seconds()
            production, interval, worst, _, reused = compare_on_holdout(services, result,
                                                                        tables)
            verdict = promotion_decision(
                candidate_score=float(result.score or 0.0), candidate_passed=result.passed,
                production_score_on_same_holdout=production,
                tolerance=settings.PROMOTION_TOLERANCE, threshold=result.threshold,
                interval=interval, worst_slice=worst,
                slice_limit=settings.PROMOTION_SLICE_LIMIT)
            seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
            gate_seconds += seconds
            gate_cpu += cpu
            rows.append({"model": result.name, "metric": result.metric,
                         "holdout_rows": result.rows_holdout, "reused_rows": reused,
                         "gate_s": round(seconds, 3),
                         "gate_cpu_s": round(cpu, 3), "promote": verdict.promote,
                         "interval": None if interval is None else interval.describe(),
                         "worst_slice": None if worst is None else worst.describe(),
                         "reason": verdict.reason})
    return {"models": rows, "gate_s": round(gate_seconds, 2),
            "gate_cpu_s": round(gate_cpu, 2)}


def write_audit(store: ModelStore, years: int) -> int:
    """Nightly promotions of the 17 for `years`, a rollback per model each month, written
    through the store's audit writer (one signed, chained append per night)."""
    book = store.book
    start = datetime(2016, 1, 1, 2, 0, tzinfo=UTC)
    moves = 0
    number = dict.fromkeys(specs.MODEL_NAMES, 0)
    for day in range(365 * years):
        at = start + timedelta(days=day)
        night = []
        for i, name in enumerate(specs.MODEL_NAMES):
            number[name] += 1
            old = f"v{number[name] - 1:04d}" if number[name] > 1 else None
            night.append(AliasMove(at=(at + timedelta(seconds=i)).isoformat(), model=name,
                                   **{"from": old}, to=f"v{number[name]:04d}",
                                   action="promote", reason="nightly", actor="scheduler"))
            if day % 30 == 29 and old is not None:
                night.append(AliasMove(at=(at + timedelta(hours=8, seconds=i)).isoformat(),
                                       model=name, **{"from": f"v{number[name]:04d}"}, to=old,
                                       action="rollback", reason="on request", actor="api"))
        with book.update():
            book.record(night)
        moves += len(night)
    return moves


def bench_audit(root: Path) -> dict[str, Any]:
    settings = settings_for(root, 0)
    signer = signer_from_file(settings.MODEL_SIGNING_KEY_FILE)
    store = ModelStore(settings.MODELS_DIR, signer=signer)
    started = time.perf_counter()
    moves = write_audit(store, YEARS)
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    report = verify_chain(store.book.audit_path, signer)
    verify_s = time.perf_counter() - started
    rng = random.Random(0)
    span = YEARS * 365 * 86400
    lookups = []
    for _ in range(200):
        at = datetime(2016, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.uniform(0, span))
        name = rng.choice(specs.MODEL_NAMES)
        started = time.perf_counter()
        store.production_at(name, at)
        lookups.append(time.perf_counter() - started)
    lookups.sort()
    return {"years": YEARS, "moves": moves, "ok": report.ok, "entries": report.entries,
            "audit_mb": round(os.path.getsize(store.book.audit_path) / 2**20, 1),
            "write_s": round(write_s, 1), "verify_s": round(verify_s, 2),
            "at_p50_ms": round(statistics.median(lookups) * 1000, 1),
            "at_p99_ms": round(lookups[int(len(lookups) * 0.99) - 1] * 1000, 1)}


def print_gate(report: dict[str, Any]) -> None:
    print(f"gate, {report['resamples']} resamples; default world (730 days, then "
          f"{report['days']} simulated)")
    print(f"{'model':<26}{'rows':>7}{'reused':>7}{'gate ms':>8}{'cpu ms':>7}  decision  "
          f"interval / worst slice")
    for r in report["models"]:
        if "error" in r:
            print(f"{r['model']:<26} failed: {r['error']}")
            continue
        decision = "promote" if r["promote"] else "hold"
        print(f"{r['model']:<26}{r['holdout_rows']:>7}{r['reused_rows']:>7}"
              f"{r['gate_s'] * 1000:>8.0f}"
              f"{r['gate_cpu_s'] * 1000:>7.0f}  {decision:<8}  "
              f"{r['interval'] or '-'}; worst slice: {r['worst_slice'] or '-'}")
    print(f"the cycle's fits: {report['cycle_fit_s']:.1f} s wall, "
          f"{report['cycle_fit_cpu_s']:.1f} s CPU; production read ahead by a waiting spare: "
          f"{report['preload_s']:.2f} s wall, {report['preload_cpu_s']:.2f} s CPU (idle time)")
    for name, what in (("warm", "production read ahead (a run in the service's spare)"),
                       ("cold", "production read by the gate (a run without a spare)")):
        r = report[name]
        print(f"gate, {what}: {r['gate_s']:.2f} s wall, {r['gate_cpu_s']:.2f} s CPU; "
              f"/ fits {r['fits_share']:.1%} wall, {r['fits_cpu_share']:.1%} CPU; "
              f"/ the whole daily cycle ({r['cycle_s']:.1f} s wall, {r['cycle_cpu_s']:.1f} s "
              f"CPU) {r['cycle_share']:.1%} wall, {r['cycle_cpu_share']:.1%} CPU "
              f"(target <= 10%)")


def print_audit(report: dict[str, Any]) -> None:
    print(f"audit: {report['years']} years, {report['moves']:,} moves, "
          f"{report['audit_mb']} MB (written in {report['write_s']} s); chain ok: "
          f"{report['ok']} ({report['entries']:,} entries)")
    print(f"verify_chain {report['verify_s']:.2f} s; production_at (at=) p50 "
          f"{report['at_p50_ms']} ms, p99 {report['at_p99_ms']} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", choices=["gate", "audit"], default=[])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--days", type=int, default=1,
                        help="days simulated between the two cycles (gate)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    parts = args.parts or ["gate", "audit"]
    out: dict[str, Any] = {}
    for part in parts:
        with tempfile.TemporaryDirectory() as tmp:
            out[part] = (bench_gate(Path(tmp), args.resamples, args.days) if part == "gate"
                         else bench_audit(Path(tmp)))
        if not args.json:
            (print_gate if part == "gate" else print_audit)(out[part])
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
