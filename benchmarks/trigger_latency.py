"""How fast `POST /ml/training/trigger` answers, under a burst and alone, and what a
one-model run costs beyond its fit, on a real multi-worker uvicorn.

    .venv/bin/python benchmarks/trigger_latency.py [--workers 4] [--triggers 50]
        [--rounds 5] [--model delay_prediction] [--days 300] [--warm-runs 3]
        [--tree PATH] [--json]

Builds a throw-away state: a generated SQLite database of `--days` days and the model
trained once (so a run is gated against production and backs it up, as in service), then
starts `uvicorn backend.app.main:app --workers N` on it (scheduler off) and measures:

- bursts: `--rounds` times, `--triggers` concurrent `POST trigger?models=<model>`, sent at
  once over connections opened beforehand; the time of each answer (one 202, the rest
  409); then, while the started run goes, triggers one after another on one connection
  (409 alone), and waits for the run to end;
- one-model runs: `POST trigger?wait=true&models=<model>` once right after start-up (a
  worker process started for the run: "cold"), then `--warm-runs` times once every web
  worker holds its spare worker ("warm"); wall time of the request against the run's
  `fit_seconds` (fit and holdout scoring, as recorded in the result).

`--tree` runs another checkout of this project (e.g. an older release, from `git archive`)
on the same kind of state; fields it does not record show as "-". Prints numbers; asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.processes import free_port, stop_group  # noqa: E402 (needs REPO on the path)


def environment(tree: Path, root: Path, url: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "DATABASE_URL": url,
            "MODELS_DIR": str(root / "models"), "LOGS_DIR": str(root / "logs"),
            "MODEL_SIGNING_KEY_FILE": str(root / "keys" / "model_signing.key"),
            "SCHEDULER_ENABLED": "false", "TRAINING_N_JOBS": "2"}


def build_state(tree: Path, root: Path, days: int, model: str) -> str:
    """The database (generated with this tree) and `model` trained once with `tree`."""
    from backend.ml.data import loading, synthetic

    url = f"sqlite:///{root / 'logistics.db'}"
    started = time.perf_counter()
    synthetic.init_db(loading.writable_engine(url), days=days, seed=42,
                      end=date.today() - timedelta(days=1))
    print(f"  database ({days} days): {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "backend.ml", "train", "--models", model],
                   cwd=tree, env=environment(tree, root, url), check=True,
                   capture_output=True)
    print(f"  {model} trained once: {time.perf_counter() - started:.1f} s", flush=True)
    return url


class Service:
    """uvicorn with `workers` workers on `root`, in its own session (stopped as a group)."""

    def __init__(self, tree: Path, root: Path, url: str, workers: int) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.started = time.perf_counter()
        self.log = (root / "uvicorn.err").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "backend.app.main:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(workers), "--log-level", "warning"],
            cwd=tree, env=environment(tree, root, url), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=self.log)

    def wait_ready(self, timeout: float = 180) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("the server exited during start-up")
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise SystemExit("the server did not become ready")

    def wait_workers(self, count: int, timeout: float = 180) -> None:
        """Until `count` different web workers have answered (each on a new connection):
        the first answer comes while the others may still be importing."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < count and time.monotonic() < deadline:
            with httpx.Client(base_url=self.base, timeout=30) as client:
                seen.add(client.get("/ml/training/status").json()["data"]["served_by"])
        time.sleep(1.0)

    def spares(self) -> list[int]:
        """Pids of idle spare worker processes of this service (its session's workers that
        hold no run): their CPU time has stopped growing, imports done."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if b"backend.ml.runs.worker" in cmdline and int(stat[3]) == self.proc.pid:
                pids.append(int(entry.name))  # field 6 of stat: the session id
        return pids

    def wait_spares(self, count: int, timeout: float = 180) -> bool:
        """Whether `count` spare workers are idle (imports done) within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.spares()
            if len(pids) >= count:
                before = {pid: cpu_seconds(pid) for pid in pids}
                time.sleep(1.0)
                if all(cpu_seconds(pid) == used for pid, used in before.items()):
                    return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def burst(port: int, count: int, model: str) -> list[tuple[int, float, Any]]:
    """`count` triggers sent at once over connections opened beforehand (so the figure is
    the trigger's, not TCP's set-up, and the client does no more than read bytes):
    (status, seconds from sending to the whole answer, body) each."""
    request = (f"POST /ml/training/trigger?models={model} HTTP/1.1\r\n"
               f"Host: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n").encode()
    conns = [socket.create_connection(("127.0.0.1", port), timeout=600)
             for _ in range(count)]
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, tuple[float, bytearray]] = {}
    answers: list[tuple[int, float, Any]] = []
    try:
        for conn in conns:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setblocking(False)
            selector.register(conn, selectors.EVENT_READ)
        for conn in conns:
            pending[conn] = (time.perf_counter(), bytearray())
            conn.send(request)  # a few dozen bytes: the socket buffer takes them at once
        while pending:
            for key, _ in selector.select(timeout=600):
                conn = key.fileobj  # type: ignore[assignment]
                started, data = pending[conn]
                data += conn.recv(65536)
                answer = http_answer(bytes(data))
                if answer is not None:
                    answers.append((answer[0], time.perf_counter() - started, answer[1]))
                    selector.unregister(conn)
                    del pending[conn]
    finally:
        for conn in conns:
            conn.close()
    return answers


def http_answer(data: bytes) -> tuple[int, Any] | None:
    """(status, JSON body) of a whole HTTP/1.1 answer in `data`; None while incomplete."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                   if line.lower().startswith("content-length:")), 0)
    if len(body) < length:
        return None
    return int(lines[0].split()[1]), json.loads(body[:length] or b"null")


def wait_run(base: str, run_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(f"{base}/ml/training/runs/{run_id}", timeout=30)
        if response.status_code == 200:
            run: dict[str, Any] = response.json()["data"]
            if run.get("status") != "running":
                return run
        time.sleep(0.05)
    raise SystemExit(f"run {run_id} did not end within {timeout} s")


def wait_idle(base: str, timeout: float = 600) -> None:
    """Until no run holds the lock (a run refused its answer may still be ending)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{base}/ml/training/status", timeout=30).json()["data"]
        if not status["trainer_status"]["is_training"]:
            return
        time.sleep(0.1)


def single_refusals(base: str, model: str, count: int = 20) -> list[float]:
    """Up to `count` triggers one after another over one kept-alive connection while a run
    goes: the seconds of each 409."""
    seconds = []
    with httpx.Client(base_url=base, timeout=600) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.post(f"/ml/training/trigger?models={model}")
            if response.status_code != 409:
                break  # the run ended (and this one started another: wait for it too)
            seconds.append(time.perf_counter() - started)
    if response.status_code == 202:
        wait_run(base, response.json()["data"]["run_id"])
    return seconds


def one_model_run(base: str, model: str) -> dict[str, Any]:
    started = time.perf_counter()
    response = httpx.post(f"{base}/ml/training/trigger?wait=true&models={model}",
                          timeout=600)
    wall = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"wait=true answered {response.status_code}: {response.text[:300]}")
    summary = response.json()["data"]
    detail = next(group[model] for group in summary["model_details"].values()
                  if model in group)
    return {"wall": wall, "fit": detail.get("fit_seconds"),
            "model": detail.get("duration_seconds"), "run": summary.get("duration_seconds")}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def measure(tree: Path, root: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    service = Service(tree, root, url, args.workers)
    figures: dict[str, Any] = {}
    try:
        figures["ready_seconds"] = service.wait_ready()
        service.wait_workers(args.workers)
        figures["cold"] = one_model_run(service.base, args.model)
        print(f"  cold one-model run: {figures['cold']}", flush=True)
        refused: list[float] = []
        accepted: list[float] = []
        alone: list[float] = []
        statuses: list[int] = []
        for round_number in range(args.rounds):
            wait_idle(service.base)
            answers = burst(service.port, args.triggers, args.model)
            statuses += [status for status, _, _ in answers]
            refused += [seconds for status, seconds, _ in answers if status == 409]
            accepted += [seconds for status, seconds, _ in answers if status == 202]
            for status, _, body in answers:
                if status == 202:
                    alone += single_refusals(service.base, args.model)
                    wait_run(service.base, body["data"]["run_id"])
            print(f"  burst {round_number + 1}: "
                  f"{sum(s == 202 for s, _, _ in answers)} x 202, "
                  f"{sum(s == 409 for s, _, _ in answers)} x 409, slowest "
                  f"{max(s for _, s, _ in answers) * 1000:.0f} ms", flush=True)
        wait_idle(service.base)
        figures.update(refused=refused, accepted=accepted, statuses=statuses, alone=alone)
        warm: list[dict[str, Any]] = []
        for _ in range(args.warm_runs):
            if not service.wait_spares(args.workers, timeout=120):
                print("  no spare workers: the warm runs start their own", flush=True)
            warm.append(one_model_run(service.base, args.model))
            print(f"  warm one-model run: {warm[-1]}", flush=True)
        figures["warm"] = warm
    finally:
        service.stop()
    return figures


def show(figures: dict[str, Any], args: argparse.Namespace) -> None:
    def ms(value: float) -> str:
        return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"

    def secs(value: Any) -> str:
        return "-" if value is None else f"{value:.2f} s"

    refused, accepted = figures["refused"], figures["accepted"]
    print()
    print(f"{args.workers} uvicorn workers, {args.rounds} burst(s) of {args.triggers} "
          f"concurrent triggers of {args.model}; start-up to ready "
          f"{figures['ready_seconds']:.1f} s")
    print(f"  answers: {statuses_line(figures['statuses'])}")
    if refused:
        print(f"  409: p50 {ms(pct(refused, 0.50))}, p99 {ms(pct(refused, 0.99))}, max "
              f"{ms(max(refused))} ({len(refused)} answers)")
    if figures["alone"]:
        alone = figures["alone"]
        print(f"  409 alone (one after another on one connection, while a run goes): p50 "
              f"{ms(pct(alone, 0.50))}, max {ms(max(alone))} ({len(alone)} answers)")
    if accepted:
        print(f"  time to the 202: median {ms(statistics.median(accepted))}, max "
              f"{ms(max(accepted))} ({len(accepted)} runs)")
    print(f"  one-model run ({args.model}), wall time of trigger?wait=true against the fit:")
    runs = [("cold", figures["cold"])] + [("warm", run) for run in figures["warm"]]
    for label, run in runs:
        over = (f"fit + {run['wall'] - run['fit']:.2f} s" if run["fit"] is not None
                else "fit not recorded")
        print(f"    {label}: wall {run['wall']:.2f} s, fit {secs(run['fit'])}, model "
              f"{secs(run['model'])}, run recorded {secs(run['run'])}: {over}")


def statuses_line(statuses: list[int]) -> str:
    counts: dict[int, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return ", ".join(f"{count} x {status}" for status, count in sorted(counts.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--triggers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="delay_prediction")
    parser.add_argument("--days", type=int, default=300)
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=REPO,
                        help="the checkout to serve (default: this one)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="trigger-bench-"))
    try:
        print(f"building the state in {root}", flush=True)
        url = build_state(args.tree, root, args.days, args.model)
        print(f"measuring {args.tree}", flush=True)
        figures = measure(args.tree, root, url, args)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        show(figures, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
