"""Latency of GET /ml/training/status at a steady request rate while a full training
cycle runs, and the time from process start to ready.

    .venv/bin/python benchmarks/status_load.py [--rate 100] [--json]

Starts a real uvicorn on a free port against the configured database (default: the
SQLite file `make run` creates) with throw-away model and log folders, measures start-up
to the first healthy /health, triggers a full training run, and fires requests at a fixed
rate (open loop: a slow answer does not slow the sender) from this separate process until
the run finishes. Prints p50, p99 and max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.processes import free_port, stop_group  # noqa: E402 (needs REPO on the path)


def start_server(tmp: Path, port: int) -> tuple[subprocess.Popen[bytes], float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MODELS_DIR": str(tmp / "models"),
           "LOGS_DIR": str(tmp / "logs"), "SCHEDULER_ENABLED": "false",
           "MODEL_SIGNING_KEY_FILE": str(tmp / "keys" / "model_signing.key")}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "backend.app.main:app",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level",
                             "warning"], env=env, cwd=REPO, start_new_session=True)
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, time.perf_counter() - started
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise SystemExit("the server exited during start-up") from None
        time.sleep(0.01)


async def load(base: str, rate: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=base, timeout=10,
                                 limits=httpx.Limits(max_connections=50)) as client:
        run = (await client.post("/ml/training/trigger")).json()["data"]["run_id"]

        async def one() -> bool:
            nonlocal errors
            t0 = time.perf_counter()
            response = await client.get("/ml/training/status")
            latencies.append(time.perf_counter() - t0)
            if response.status_code != 200:
                errors += 1
                return True
            return bool(response.json()["data"]["trainer_status"]["is_training"])

        interval = 1 / rate
        tasks: list[asyncio.Task[bool]] = []
        next_at = time.perf_counter()
        started = next_at
        while True:
            tasks.append(asyncio.create_task(one()))
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            done = [t for t in tasks if t.done()]
            if len(tasks) > rate and done and not done[-1].result():
                break  # the run finished
        await asyncio.gather(*tasks)
        duration = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

    return {"run_id": run, "requests": len(ordered), "errors": errors,  # type: ignore[dict-item]
            "seconds": round(duration, 1), "achieved_rate": round(len(ordered) / duration, 1),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(ordered[-1] * 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="status-bench-") as tmp:
        port = free_port()
        proc, ready = start_server(Path(tmp), port)
        try:
            result = asyncio.run(load(f"http://127.0.0.1:{port}", args.rate))
        finally:
            stop_group(proc)
    result["startup_to_ready_seconds"] = round(ready, 3)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"start-up to ready: {result['startup_to_ready_seconds']} s")
    print(f"GET /ml/training/status at {args.rate:g}/s during run {result['run_id']} "
          f"({result['seconds']} s, {result['requests']} requests, {result['errors']} errors, "
          f"achieved {result['achieved_rate']}/s): p50 {result['p50_ms']} ms, "
          f"p99 {result['p99_ms']} ms, max {result['max_ms']} ms")


if __name__ == "__main__":
    main()
