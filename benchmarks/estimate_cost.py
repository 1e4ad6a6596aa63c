"""What estimating performance without labels adds to the hourly check's scoring.

    PYTHONPATH=. .venv/bin/python benchmarks/estimate_cost.py [--days 300] [--fresh-days 7]
        [--runs 5]

Generates `--days` days in memory, trains the estimable models (training fits each one's
estimator on its holdout, as the service does: `fit ms` beside the model's own `train ms`,
and `state KB`, what it adds to the version's signed metadata), generates `--fresh-days`
more days and times, per model, with the estimator restored from that state, on the same
fresh rows (median of `--runs`):

- score:      what the check does today: run the model, compute the metric with labels;
- outputs:    one pass of the model keeping what estimation reads (`model_outputs`),
              which the check can score from as well (its `predicted` is predict's);
- estimate:   the estimate from those outputs (calibration, loss model, interval);
- standalone: `estimate` on the rows alone, running the model itself.

The added cost is estimate / score (and outputs - score, the cost of keeping probabilities
or encoded inputs instead of labels only). A check that estimates has too few labels to
score, so it runs `standalone` in place of `score`: standalone / score is the check's
added cost per model estimated. Prints a table; asserts nothing; target <= 20%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pandas as pd

from backend.ml.data import synthetic
from backend.ml.fleet import specs
from backend.ml.monitoring import estimate as est
from backend.ml.monitoring.fresh import fresh_rows
from backend.ml.training import trainer

END = date(2026, 10, 31)


def median_seconds(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_model(spec: specs.ModelSpec, model: Any, estimator: est.PerformanceEstimator,
               rows: pd.DataFrame, runs: int) -> dict[str, float]:
    X = rows[list(spec.features)]
    outputs = est.model_outputs(spec, model, X)
    return {
        "score": median_seconds(lambda: trainer.evaluate(spec, model, rows), runs),
        "outputs": median_seconds(lambda: est.model_outputs(spec, model, X), runs),
        "estimate": median_seconds(
            lambda: est.estimate(estimator, model, rows, outputs=outputs), runs),
        "standalone": median_seconds(lambda: est.estimate(estimator, model, rows), runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=300)
    parser.add_argument("--fresh-days", type=int, default=7)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    start = END - timedelta(days=args.days - 1)
    history = synthetic.generate(start, args.days, seed=42)
    fresh = synthetic.generate(END + timedelta(days=1), args.fresh_days, seed=42)
    tables = {t: pd.concat([history[t], fresh[t]], ignore_index=True) for t in history}
    chosen = [s for s in specs.SPECS.values() if est.supported(s)]
    print(f"training {len(chosen)} estimable models of {len(specs.SPECS)} on {args.days} days")
    results = trainer.train_many(chosen, history, thresholds={s.name: 0.0 for s in chosen},
                                 n_jobs=2)
    print(f"{'model':<24}{'rows':>7}{'score ms':>10}{'outputs ms':>12}{'estimate ms':>13}"
          f"{'standalone ms':>15}{'added':>8}{'train ms':>10}{'fit ms':>8}{'state KB':>10}")
    totals = {"score": 0.0, "outputs": 0.0, "estimate": 0.0, "standalone": 0.0,
              "train": 0.0, "fit": 0.0}
    for spec, result in zip(chosen, results, strict=True):
        if not result.ok:
            print(f"{spec.name:<24} not trained: {result.error}")
            continue
        model = result.estimator
        state = result.performance_estimator
        if state is None:
            print(f"{spec.name:<24} trained without an estimator (see the log)")
            continue
        # What the check does: the estimator from the version's (JSON) metadata.
        estimator = est.restore(spec, json.loads(json.dumps(state)), model)
        totals["train"] += result.duration_seconds
        totals["fit"] += state["fit_seconds"]
        rows = fresh_rows(spec, tables[spec.table], str(result.data_end))
        if rows.empty:
            print(f"{spec.name:<24} no fresh labelled rows in {args.fresh_days} days")
            continue
        timed = time_model(spec, model, estimator, rows, args.runs)
        for key, seconds in timed.items():
            totals[key] += seconds
        print(f"{spec.name:<24}{len(rows):>7}" + "".join(
            f"{timed[k] * 1000:>{w}.1f}" for k, w in (("score", 10), ("outputs", 12),
                                                       ("estimate", 13), ("standalone", 15)))
              + f"{timed['estimate'] / timed['score']:>8.0%}"
              + f"{result.duration_seconds * 1000:>10.0f}{state['fit_seconds'] * 1000:>8.0f}"
              + f"{len(json.dumps(state)) / 1024:>10.1f}")
    print(f"{'all':<24}{'':>7}" + "".join(
        f"{totals[k] * 1000:>{w}.1f}" for k, w in (("score", 10), ("outputs", 12),
                                                   ("estimate", 13), ("standalone", 15))))
    print(f"added on top of scoring, from the model's one pass: "
          f"{totals['estimate'] / totals['score']:.0%} (estimate), "
          f"{(totals['outputs'] - totals['score'] + totals['estimate']) / totals['score']:.0%}"
          f" (with the outputs pass in place of predict); running the model again: "
          f"{totals['standalone'] / totals['score']:.0%}")
    rest = totals["train"] - totals["fit"]  # a model's duration includes its estimator
    print(f"fitting the estimators at training: {totals['fit']:.1f} s on top of "
          f"{rest:.1f} s of training the models ({totals['fit'] / rest:.0%}; in the "
          "training workers, in parallel like the fits)")


if __name__ == "__main__":
    main()
