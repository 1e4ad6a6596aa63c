"""`python -m backend.ml bench`: the training cycle's wall time against bare fitting.

For each size it measures, in a fresh process so peak memory is that size's own:
  cycle_seconds  load every table + `train_many` of the 17 specs (what a run costs)
  bare_seconds   the sum of plain fit + predict of the same estimators on the same
                 arrays, one after another in one process, one thread each as in the
                 cycle's workers (the irreducible work)
  ratio          cycle / bare: below 1 when the fan-out uses more than one core; the
                 overhead of loading, fan-out and bookkeeping is what keeps it above
                 1 / cores
  peak_rss_mb    the largest resident set of the process or any of its workers
Sizes other than "default" are generated into a temporary SQLite file first (not timed).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from backend.ml.config import Settings
from backend.ml.data import loading, schema, synthetic
from backend.ml.fleet import specs
from backend.ml.training import trainer

BENCH_DAYS = 730


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)  # Linux reports KiB


def measure(url: str, n_jobs: int) -> dict[str, Any]:
    engine = loading.readonly_engine(url)
    chosen = list(specs.SPECS.values())
    thresholds = {s.name: specs.threshold_for(s, 0.70) for s in chosen}
    started = time.perf_counter()
    tables = trainer.load_tables(engine, chosen)
    load_seconds = time.perf_counter() - started
    with trainer.parallel_backend("loky"):
        results = trainer.train_many(chosen, tables, thresholds=thresholds, n_jobs=n_jobs)
    cycle = time.perf_counter() - started
    per_model: dict[str, dict[str, Any]] = {}
    bare_total = 0.0
    # One thread per fit, as in the cycle's workers (loky gives each cores // n_jobs):
    # the same work, minus loading, fan-out and bookkeeping.
    with threadpool_limits(limits=1):
        for spec, result in zip(chosen, results, strict=True):
            bare = _bare_fit(spec, tables[spec.table])
            bare_total += bare
            per_model[spec.name] = {"cycle_task_seconds": result.duration_seconds,
                                    "bare_seconds": round(bare, 3), "score": result.score,
                                    "rows": result.rows_train + result.rows_holdout}
    return {"shipments": len(tables["shipments"]), "load_seconds": round(load_seconds, 2),
            "cycle_seconds": round(cycle, 2), "bare_seconds": round(bare_total, 2),
            "ratio": round(cycle / bare_total, 3), "peak_rss_mb": _peak_rss_mb(),
            "per_model": per_model}


def _bare_fit(spec: specs.ModelSpec, table: Any) -> float:
    """Seconds of a plain fit + predict of the spec's estimator on its holdout split."""
    labelled, _ = trainer.labelled_frame(spec, table)
    train, holdout = trainer.time_split(labelled, schema.time_column(spec.table))
    X, Xh = train[list(spec.features)], holdout[list(spec.features)]
    y = trainer.target_values(spec, train[spec.target])
    started = time.perf_counter()
    estimator = spec.make_estimator()
    estimator.fit(X) if spec.task == "anomaly" else estimator.fit(X, y)
    trainer.decision_values(spec, estimator, Xh)
    return time.perf_counter() - started


def _measure_one(size: str, settings: Settings) -> dict[str, Any]:
    n_jobs = settings.TRAINING_N_JOBS
    if size == "default":
        return {"size": "default", **measure(settings.DATABASE_URL, n_jobs)}
    shipments = int(size)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        per_day = max(1, round(shipments / (BENCH_DAYS * 1.0)))
        t0 = time.perf_counter()
        synthetic.init_db(loading.writable_engine(url), days=BENCH_DAYS, end=date(2026, 10, 31),
                        shipments_per_day=per_day)
        generated = round(time.perf_counter() - t0, 1)
        return {"size": size, "generate_seconds": generated, **measure(url, n_jobs)}


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'size':>10} {'shipments':>10} {'load s':>7} {'cycle s':>8} {'bare s':>7} "
          f"{'ratio':>6} {'peak MB':>8}")
    for r in rows:
        print(f"{r['size']:>10} {r['shipments']:>10,} {r['load_seconds']:>7.1f} "
              f"{r['cycle_seconds']:>8.1f} {r['bare_seconds']:>7.1f} {r['ratio']:>6.2f} "
              f"{r['peak_rss_mb']:>8.0f}")
    for r in rows:
        print(f"\nper model at {r['size']} (cycle task s / bare s / score):")
        for name, m in r["per_model"].items():
            print(f"  {name:<24} {m['cycle_task_seconds']:>6.2f} {m['bare_seconds']:>6.2f} "
                  f"{m['score']}")


def main(args: argparse.Namespace, settings: Settings) -> int:
    if args.one:
        print(json.dumps(_measure_one(args.one, settings)))
        return 0
    rows = []
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        if size != "default" and not size.isdigit():
            raise ValueError(f"bench size {size!r} is neither 'default' nor a shipment count")
        print(f"measuring {size} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, "-m", "backend.ml", "bench", "--one", size],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"bench at {size} failed: {proc.stderr.strip()[-500:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows)
    return 0
