"""How long does one GET /metrics scrape take on a trained fleet with a full history?

    PYTHONPATH=. .venv/bin/python benchmarks/metrics_scrape.py [--scrapes 50] [--json]

In a temporary folder: generates a small database and trains all 17 models once (both
in child processes, as the service does), then fills the history past its limits (a year
of daily runs with 17-model details, two weeks of hourly checks in the shape the monitor
writes, alerts), so the main file is as large as it gets and older entries sit in year
archives, as in production. Then scrapes /metrics through the app (in process, no
network):

- warm: the history file unchanged since the last scrape (the usual case: it changes a
  few times an hour);
- cold: another process (here another `History` object) wrote the history just before,
  so the scrape parses the main file again.

Prints p50, p95 and max of each, the body size and the number of series.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from history_bench import training  # same folder: a daily run with 17-model details

from backend.app.main import create_app
from backend.ml.config import Settings, get_settings
from backend.ml.fleet import specs
from backend.ml.history import DEFAULT_LIMITS, History
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services

REPO = Path(__file__).resolve().parents[1]


def check(rng: random.Random, when: datetime) -> dict[str, Any]:
    """A check entry in the shape `backend.ml.monitoring.check` writes."""
    models = {}
    for name in specs.MODEL_NAMES:
        live = round(rng.uniform(0.6, 0.9), 4)
        models[name] = {"version": "v0001", "threshold": 0.7, "samples": rng.randint(30, 900),
                        "live_score": live, "verdict": "healthy" if live >= 0.7 else "watch",
                        "drift": {"max_psi": round(rng.uniform(0, 0.3), 4),
                                  "top_features": [["feature_a", 0.12]]}}
    return {"check_id": f"check-{when:%Y%m%dT%H%M%SZ}-{rng.getrandbits(16):04x}",
            "timestamp": when.isoformat(), "models": models}


def fill_history(history: History, seed: int = 7) -> None:
    """Past every limit, so archiving has run and the main file is at its largest."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    runs = [training(rng, day, 0) for day in range(DEFAULT_LIMITS["trainings"] + 50)]
    hours = DEFAULT_LIMITS["checks"] + 60
    checks = [check(rng, now - timedelta(hours=hours - h)) for h in range(hours)]
    alerts = [{"level": "warning", "kind": rng.choice(["drift_detected", "model_failed",
                                                       "performance_degradation"]),
               "model": rng.choice(specs.MODEL_NAMES), "message": "synthetic",
               "timestamp": (now - timedelta(minutes=n)).isoformat()}
              for n in range(DEFAULT_LIMITS["alerts"] + 100, 0, -1)]
    history.extend(trainings=runs, checks=checks, alerts=alerts)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
            "max_ms": round(ordered[-1], 2)}


def timed_scrape(client: TestClient) -> tuple[float, bytes]:
    start = time.perf_counter()
    response = client.get("/metrics")
    elapsed = (time.perf_counter() - start) * 1000
    response.raise_for_status()
    return elapsed, response.content


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--days", type=int, default=300, help="days of generated data")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as folder:
        root = Path(folder)
        url = f"sqlite:///{root / 'logistics.db'}"
        # Data and training in child processes, as in production: this process's heap
        # stays the size of a server's, which matters to the garbage collector while a
        # cold scrape parses the history (in-process generation doubled its time).
        subprocess.run([sys.executable, "-m", "backend.ml", "init-db", "--days",
                        str(args.days), "--end", "2026-10-31"], check=True, cwd=REPO,
                       env={**os.environ, "DATABASE_URL": url}, capture_output=True)
        settings = Settings(DATABASE_URL=url, MODELS_DIR=root / "models",
                            LOGS_DIR=root / "logs", SCHEDULER_ENABLED=False,
                            TRAINING_N_JOBS=2)
        started = time.perf_counter()
        summary = Runner(Services.from_settings(settings), isolated=True).run()
        train_s = time.perf_counter() - started
        fill_history(History(settings.history_file))
        writer = History(settings.history_file)  # stands for another process

        app = create_app()
        app.dependency_overrides[get_settings] = lambda: settings
        with TestClient(app) as client:
            timed_scrape(client)  # the first one also imports and warms caches
            warm, body = [], b""
            for _ in range(args.scrapes):
                elapsed, body = timed_scrape(client)
                warm.append(elapsed)
            cold = []
            for n in range(max(5, args.scrapes // 5)):
                writer.append_alert({"level": "info", "kind": "bench", "message": f"#{n}"})
                cold.append(timed_scrape(client)[0])
        main_file = settings.history_file.stat().st_size
        archives = len(History(settings.history_file).archived_years())
    series = sum(1 for line in body.decode().splitlines() if line and line[0] != "#")
    result = {"trained": f"{summary['successful_models']}/17 in {train_s:.1f} s",
              "history_main_file_bytes": main_file, "history_archive_years": archives,
              "body_bytes": len(body), "series": series,
              "warm": percentiles(warm) | {"scrapes": len(warm)},
              "cold": percentiles(cold) | {"scrapes": len(cold)}}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"trained {result['trained']}; history main file "
          f"{main_file / 1e6:.2f} MB, {archives} year archive(s)")
    print(f"/metrics body {len(body):,} bytes, {series} series")
    for kind in ("warm", "cold"):
        r = result[kind]
        print(f"{kind:>5}: p50 {r['p50_ms']:.2f} ms   p95 {r['p95_ms']:.2f} ms   "
              f"max {r['max_ms']:.2f} ms   ({r['scrapes']} scrapes)")


if __name__ == "__main__":
    main()
