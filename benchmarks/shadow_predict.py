"""What shadow scoring of candidates costs predict, on real uvicorn processes.

    .venv/bin/python benchmarks/shadow_predict.py [--requests 300] [--rows 20]
        [--sleep 2.0] [--model scenario_analysis] [--days 200] [--json]

Builds a throw-away state: a generated SQLite database of `--days` days, `--model` trained
once (production v0001) and the same fit saved again through the store as v0002, an
unpromoted candidate. Starts two single-worker uvicorn servers on copies of that state
(scheduler off), one with SHADOW_CANDIDATES=false and one with true, and sends each
`--requests` predict requests of `--rows` records, one after another on a kept-alive
connection, alternating blocks of 10 between the two servers so that a change in the
machine's load hits both alike. Prints p50/p99/max per server and whether p99 with the
shadow on is within 10% of p99 with it off; then the shadow's counters from /metrics.
`--control` runs both servers with the shadow off: on a shared machine the two p99s then
differ by noise alone, and this shows by how much.

How the slow candidate gets in: the servers run `server()` below (uvicorn --factory), the
real app whose lifespan, when SHADOW_BENCH_SLEEP_SECONDS is set (only this module reads
it), loads the candidate through the store and puts it into the shadow scorer's own
cache wrapped in `Slow`, which sleeps that long before each prediction. The sleep holds
no lock and no CPU: it measures the design (queue, single worker, no waiting in predict),
not CPU contention. `--sleep 0` leaves the real candidate in, whose scoring does use CPU.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fakes import Slow  # noqa: E402 (needs REPO on the path)
from tests.processes import free_port, stop_group  # noqa: E402

BLOCK = 10  # requests in a row to one server before switching to the other
WARM_UP = 20


def server() -> Any:
    """The app, with the candidate made slow when SHADOW_BENCH_SLEEP_SECONDS is set."""
    from backend.app.main import create_app

    app = create_app()
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[None]:
        async with inner(app_):
            scorer = app_.state.shadow
            sleep = os.environ.get("SHADOW_BENCH_SLEEP_SECONDS")
            if scorer is not None and sleep:
                name = os.environ["SHADOW_BENCH_MODEL"]
                production = scorer.store.aliases(name)["production"]
                version = scorer.candidate(name, str(production))
                assert version is not None, f"{name} has no candidate"
                estimator, _ = scorer.store.load(name, version)
                scorer.estimators[name] = (version, Slow(estimator, float(sleep)))
            yield

    app.router.lifespan_context = lifespan
    return app


def environment(root: Path, url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "DATABASE_URL": url,
            "MODELS_DIR": str(root / "models"), "LOGS_DIR": str(root / "logs"),
            "MODEL_SIGNING_KEY_FILE": str(root.parent / "keys" / "model_signing.key"),
            "SCHEDULER_ENABLED": "false", "TRAINING_N_JOBS": "2", **extra}


def build_state(root: Path, days: int, model: str) -> str:
    """Database, `model` trained (v0001) and saved again as candidate v0002, under root/base."""
    from backend.ml.config import Settings
    from backend.ml.data import loading, synthetic
    from backend.ml.runs.services import Services

    url = f"sqlite:///{root / 'logistics.db'}"
    started = time.perf_counter()
    synthetic.init_db(loading.writable_engine(url), days=days, seed=42,
                      end=date.today() - timedelta(days=1))
    print(f"  database ({days} days): {time.perf_counter() - started:.1f} s", flush=True)
    base = root / "base"
    env = environment(base, url)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "backend.ml", "train", "--models", model],
                   cwd=REPO, env=env, check=True, capture_output=True)
    print(f"  {model} trained: {time.perf_counter() - started:.1f} s", flush=True)
    settings = Settings(DATABASE_URL=url, MODELS_DIR=base / "models", LOGS_DIR=base / "logs",
                        MODEL_SIGNING_KEY_FILE=root / "keys" / "model_signing.key")
    store = Services.from_settings(settings).store
    model_path, _ = store.paths(model, "v0001")
    saved = store.import_version(model, model_path.read_bytes(), store.verify(model, "v0001"))
    print(f"  candidate {saved['version']} saved (not promoted)", flush=True)
    return url


class Service:
    """One uvicorn worker running `server()` on its own copy of the state."""

    def __init__(self, root: Path, url: str, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = (root / "uvicorn.err").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "shadow_predict:server",
             "--app-dir", str(REPO / "benchmarks"), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1", "--log-level", "warning"],
            cwd=REPO, env=environment(root, url, **env), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=self.log)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server on {self.port} exited during start-up")
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit("the server did not become ready")

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()


def rows_for(url: str, model: str, n: int) -> list[dict[str, Any]]:
    """`n` real rows of the model's features, as JSON would carry them."""
    import math

    from backend.ml.data import loading
    from backend.ml.fleet import specs
    from backend.ml.training import trainer

    spec = specs.get_spec(model)
    table = trainer.load_tables(loading.readonly_engine(url), [spec])[spec.table]
    frame = trainer.labelled_frame(spec, table)[0].tail(n)[list(spec.features)]
    return [{k: (None if isinstance(v, float) and math.isnan(v)
                 else str(v) if k in spec.categorical else float(v)) for k, v in r.items()}
            for r in frame.to_dict("records")]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def shadow_counters(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    return {line.split("{")[0].split(" ")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("ml_shadow_")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=2.0)
    parser.add_argument("--model", default="scenario_analysis")
    parser.add_argument("--days", type=int, default=200)
    parser.add_argument("--control", action="store_true",
                        help="both servers with the shadow off (an A/A run): the noise "
                             "floor of the p99 comparison on this machine")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    services: dict[str, Service] = {}
    try:
        print("building state:", flush=True)
        url = build_state(root, args.days, args.model)
        body = {"records": rows_for(url, args.model, args.rows)}
        sleep = {"SHADOW_BENCH_SLEEP_SECONDS": str(args.sleep)} if args.sleep > 0 else {}
        second = "false" if args.control else "true"
        for mode, on in (("off", "false"), ("on", second)):
            shutil.copytree(root / "base", root / mode)
            services[mode] = Service(root / mode, url, SHADOW_CANDIDATES=on,
                                     SHADOW_BENCH_MODEL=args.model, **sleep)
        for service in services.values():
            service.wait_ready()
        times: dict[str, list[float]] = {mode: [] for mode in services}
        clients = {mode: httpx.Client(base_url=s.base, timeout=60)
                   for mode, s in services.items()}
        path = f"/ml/models/{args.model}/predict"
        for client in clients.values():  # the production estimator loaded, connections up
            for _ in range(WARM_UP):
                client.post(path, json=body).raise_for_status()
        while any(len(t) < args.requests for t in times.values()):
            for mode, client in clients.items():
                for _ in range(min(BLOCK, args.requests - len(times[mode]))):
                    started = time.perf_counter()
                    client.post(path, json=body).raise_for_status()
                    times[mode].append(time.perf_counter() - started)
        counters = shadow_counters(services["on"].base)
        for client in clients.values():
            client.close()
        report = {mode: {"p50_ms": 1000 * statistics.median(t),
                         "p99_ms": 1000 * percentile(t, 0.99), "max_ms": 1000 * max(t),
                         "requests": len(t)} for mode, t in times.items()}
        ratio = report["on"]["p99_ms"] / report["off"]["p99_ms"]
        if args.json:
            print(json.dumps({"report": report, "p99_ratio": ratio, "shadow": counters,
                              "sleep": args.sleep, "rows": args.rows}, indent=2))
            return
        print(f"\npredict {args.model}, {args.rows} rows, {args.requests} requests each, "
              f"candidate sleeping {args.sleep:g} s per batch"
              + (" (control: the 'on' server has the shadow OFF too)" if args.control
                 else "") + ":")
        print(f"{'shadow':<8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        for mode, row in report.items():
            print(f"{mode:<8}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}{row['max_ms']:>10.2f}")
        verdict = "within" if ratio <= 1.10 else "NOT within"
        print(f"p99 on/off = {ratio:.3f}: {verdict} 10%")
        print("shadow counters (on):", ", ".join(f"{k}={v:g}" for k, v in counters.items()))
    finally:
        for service in services.values():
            service.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
