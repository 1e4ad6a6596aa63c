"""How fast is the training history after ten years of use?

Builds ten years of synthetic history in a temporary folder (3,650 daily trainings with
17-model details, 87,600 hourly checks, a version per model per training, a few alerts)
through `History.extend` in batches, which runs the same locking, archiving and writing
code as single appends. Then times, over `--reps` repetitions:

- appending one training record (lock, read, parse, change, write, fsync);
- reading the newest page of 50 trainings, cold (a new `History`, so the file is parsed)
  and warm (the same `History`: the file is read and compared, not parsed again);
- stats();
and, once, an append that pushes a list past its limit (so a year archive is rewritten).

    PYTHONPATH=. .venv/bin/python benchmarks/history_bench.py [--json] [--reps 20]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backend.ml.history import History

TARGET_MS = 50.0
GROUPS: dict[str, list[tuple[str, str]]] = {
    "prediction_models": [
        ("delay_prediction", "r2"), ("cost_prediction", "r2"),
        ("demand_forecasting", "one_minus_wape"), ("quality_prediction", "balanced_accuracy"),
        ("fuel_consumption", "r2")],
    "optimization_models": [
        ("route_optimization", "accuracy"), ("cost_optimization", "accuracy"),
        ("time_optimization", "accuracy"), ("vehicle_allocation", "accuracy"),
        ("material_recommendation", "accuracy")],
    "risk_decision_models": [
        ("risk_assessment", "balanced_accuracy"), ("decision_support", "accuracy"),
        ("anomaly_detection", "roc_auc"), ("supplier_performance", "accuracy")],
    "advanced_models": [
        ("scenario_analysis", "r2"), ("predictive_maintenance", "balanced_accuracy"),
        ("customer_satisfaction", "accuracy")],
}
MODELS = [(name, metric) for models in GROUPS.values() for name, metric in models]
START = datetime(2016, 1, 1, tzinfo=UTC)
DAYS = 3650


def training(rng: random.Random, day: int, version: int) -> dict[str, Any]:
    when = START + timedelta(days=day, hours=2, seconds=rng.uniform(5, 30))
    details: dict[str, dict[str, Any]] = {}
    failed = 0
    for group, models in GROUPS.items():
        details[group] = {}
        for name, metric in models:
            score = round(min(0.99, rng.gauss(0.8, 0.04)), 4)
            passed = score >= 0.7
            failed += not passed
            details[group][name] = {
                "metric": metric, "score": score, "baseline": round(rng.uniform(0.1, 0.5), 4),
                "threshold": 0.7, "passed": passed, "rows": rng.randint(20_000, 120_000),
                "duration_seconds": round(rng.uniform(2, 40), 2), "version": f"v{version:04d}",
                "promoted": passed}
    return {
        "run_id": f"{when:%Y%m%dT%H%M%SZ}-{rng.getrandbits(32):08x}",
        "timestamp": when.isoformat(), "trigger": "daily",
        "status": "success" if failed == 0 else "partial",
        "models_trained": 17, "successful_models": 17 - failed, "failed_models": failed,
        "avg_accuracy": round(rng.uniform(0.75, 0.86), 4),
        "duration_seconds": round(rng.uniform(200, 400), 1), "errors": [],
        "model_details": details}


def check(rng: random.Random, hour: int) -> dict[str, Any]:
    when = START + timedelta(hours=hour, minutes=5)
    results = {name: {"score": round(rng.uniform(0.68, 0.9), 4), "threshold": 0.7,
                      "rows": rng.randint(0, 900), "max_psi": round(rng.uniform(0, 0.3), 3),
                      "action": "none"} for name, _ in MODELS}
    return {"timestamp": when.isoformat(), "status": "ok", "results": results}


def version(rng: random.Random, name: str, metric: str, run: dict[str, Any],
            number: int) -> dict[str, Any]:
    return {"version": f"v{number:04d}", "timestamp": run["timestamp"], "run_id": run["run_id"],
            "metric": metric, "score": round(rng.uniform(0.66, 0.9), 4), "passed": True,
            "promoted": True, "sha256": f"{rng.getrandbits(256):064x}"}


def build(history: History, batch_days: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    for first in range(0, DAYS, batch_days):
        days = range(first, min(first + batch_days, DAYS))
        runs = [training(rng, day, day + 1) for day in days]
        checks = [check(rng, day * 24 + hour) for day in days for hour in range(24)]
        versions = {name: [version(rng, name, metric, run, days[0] + i + 1)
                           for i, run in enumerate(runs)] for name, metric in MODELS}
        alerts = [{"timestamp": run["timestamp"], "level": "warning", "kind": "below_threshold",
                   "message": "a model scored under its threshold"}
                  for run in runs if run["failed_models"]][::7]
        history.extend(trainings=runs, checks=checks, alerts=alerts, model_versions=versions)


def timed(fn: Callable[[], object], reps: int) -> dict[str, float]:
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(statistics.median(samples), 2), "max_ms": round(max(samples), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batch-days", type=int, default=365)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="history-bench-") as folder:
        path = Path(folder) / "training_history.json"
        history = History(path)
        start = time.perf_counter()
        build(history, args.batch_days)
        build_s = time.perf_counter() - start

        stats = history.stats()
        rng = random.Random(99)
        day = iter(range(DAYS, DAYS + args.reps + 1))
        before = len(history.trainings(limit=10**6))
        results: dict[str, Any] = {
            "append_training": timed(
                lambda: history.append_training(training(rng, next(day), 0)), args.reps),
        }
        # Did one of the timed appends pass the limit (and so rewrite a year archive)?
        results["append_training"]["archived_during_timing"] = (
            len(history.trainings(limit=10**6)) < before + args.reps)
        results |= {
            "read_page_50_cold": timed(lambda: History(path).trainings(limit=50), args.reps),
            "read_page_50_warm": timed(lambda: history.trainings(limit=50), args.reps),
            "stats_cold": timed(lambda: History(path).stats(), args.reps),
            "stats_warm": timed(history.stats, args.reps),
            # Past the main file: parses the newest year archive (a year of hourly checks).
            "read_page_50_in_archive": timed(
                lambda: History(path).trainings(limit=50, offset=300, archived=True), 3),
        }
        # One append that passes the checks limit: archives 20% of the limit into the
        # current year's file, which holds a whole year of hourly checks.
        hour = DAYS * 24
        while len(history.checks(limit=10**6)) < history.limits["checks"]:
            history.append_check(check(rng, hour))
            hour += 1
        results["append_that_archives_ms"] = timed(
            lambda: history.append_check(check(rng, hour)), 1)["max_ms"]
        files = sorted(Path(folder).glob("training_history*.json"))
        sizes = {f.name: f.stat().st_size for f in files}
        results.update({
            "build_seconds": round(build_s, 1),
            "limits": history.limits,
            "main_file_bytes": sizes.pop(path.name),
            "archive_bytes": sizes,
            "total_bytes": sum(f.stat().st_size for f in files),
            "entries_in_main": {k: len(v) for k, v in json.loads(path.read_bytes()).items()
                                if isinstance(v, list)},
            "stats": {k: v for k, v in stats.items() if k != "per_model"},
            "target_ms": TARGET_MS,
        })
        timings = ("append_training", "read_page_50_cold", "read_page_50_warm")
        results["within_target"] = all(results[k]["max_ms"] <= TARGET_MS for k in timings)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"built 10 years ({DAYS} trainings, {DAYS * 24} checks) in {build_s:.1f} s")
    print(f"main file: {results['main_file_bytes'] / 1e6:.2f} MB "
          f"{results['entries_in_main']}  limits {results['limits']}")
    for name, size in results["archive_bytes"].items():
        print(f"  archive {name}: {size / 1e6:.2f} MB")
    print(f"  total on disk: {results['total_bytes'] / 1e6:.1f} MB")
    print(f"stats: {results['stats']}")
    for key in ("append_training", "read_page_50_cold", "read_page_50_warm", "stats_cold",
                "stats_warm", "read_page_50_in_archive"):
        reps = 3 if key == "read_page_50_in_archive" else args.reps
        print(f"{key:>23}: median {results[key]['median_ms']:7.2f} ms   "
              f"max {results[key]['max_ms']:7.2f} ms   ({reps} reps)")
    if results["append_training"]["archived_during_timing"]:
        print("  (one timed append passed the trainings limit and rewrote a year archive)")
    print(f"{'append_that_archives':>23}: {results['append_that_archives_ms']:.1f} ms "
          f"(once per {history.limits['checks'] // 5} checks, "
          f"{history.limits['trainings'] // 5} trainings)")
    print(f"target <= {TARGET_MS:.0f} ms (append, page reads): "
          f"{'met' if results['within_target'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
