"""Wall time of the read-only CLI commands and of one periodic check, this tree against an
older release (default: the commit before the core was split by concern), on the same
trained state.

    .venv/bin/python benchmarks/cli_and_check.py [--before GIT_REF_OR_PATH] [--runs 5]
                                                 [--check-runs 3] [--days 300] [--keep]

Builds the state once with this tree: a generated SQLite database (`--days` days ending
`--fresh-days` ago), all 17 models trained on it, then `--fresh-days` more days appended
(no drift), so the check scores every model on fresh labelled rows and finds nothing
degraded. Each tree then runs on its own copy of that state (`DATABASE_URL`, `MODELS_DIR`,
`LOGS_DIR`); when the older tree cannot read the model files this one writes, it trains
its own copy first. Every command runs in a fresh process, as an operator runs it; the
figure is the median wall time. Prints a table; asserts nothing.
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
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"models": 0.7, "history": 0.7, "backups": 0.7, "check": 3.0}
BEFORE_REF = "4e78336"


def before_tree(ref: str, root: Path) -> Path:
    """A checkout of `ref` (a path is taken as it is)."""
    if Path(ref).is_dir():
        return Path(ref)
    tree = root / "before-tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ref],
                   check=True, capture_output=True)
    return tree


def env_for(tree: Path, state: Path, url: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "DATABASE_URL": url,
            "MODELS_DIR": str(state / "models"), "LOGS_DIR": str(state / "logs"),
            "MODEL_SIGNING_KEY_FILE": str(state / "keys" / "model_signing.key"),
            "SCHEDULER_ENABLED": "false"}


def cli(tree: Path, state: Path, url: str, *args: str,
        timeout: float = 3600) -> tuple[float, subprocess.CompletedProcess[str]]:
    """One `python -m backend.ml ...` in `tree` on `state`: (seconds, the process)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "backend.ml", *args], cwd=tree,
                          env=env_for(tree, state, url), capture_output=True, text=True,
                          timeout=timeout)
    return time.perf_counter() - started, proc


def must(result: tuple[float, subprocess.CompletedProcess[str]], what: str) -> str:
    seconds, proc = result
    if proc.returncode not in (0, 1):
        sys.exit(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    print(f"  {what}: {seconds:.1f} s", flush=True)
    return proc.stdout


def build_state(root: Path, days: int, fresh_days: int) -> str:
    """The database and the trained state, with this tree's code; the database URL."""
    sys.path.insert(0, str(REPO))
    from backend.ml.data import loading, synthetic

    url = f"sqlite:///{root / 'logistics.db'}"
    engine = loading.writable_engine(url)
    started = time.perf_counter()
    synthetic.init_db(engine, days=days, seed=42,
                      end=date.today() - timedelta(days=fresh_days + 1))
    print(f"  database ({days} days): {time.perf_counter() - started:.1f} s", flush=True)
    state = root / "state"
    must(cli(REPO, state, url, "train", "--trigger", "daily"), "train all 17 (this tree)")
    started = time.perf_counter()
    synthetic.simulate(engine, days=fresh_days, seed=7)
    print(f"  {fresh_days} fresh days appended: {time.perf_counter() - started:.1f} s",
          flush=True)
    return url


def production_count(tree: Path, state: Path, url: str) -> int:
    """How many models `models --json` of `tree` sees in production on `state`."""
    _, proc = cli(tree, state, url, "models", "--json", timeout=300)
    if proc.returncode != 0:
        return 0
    try:
        rows = json.loads(proc.stdout)
    except ValueError:
        return 0
    return sum(1 for row in rows if isinstance(row, dict) and row.get("production"))


def prepare(tree: Path, root: Path, name: str, url: str) -> Path:
    """A copy of the built state for `tree`, trained by `tree` itself if it cannot read it."""
    state = root / name
    shutil.copytree(root / "state", state)
    # A release before skops lists skops versions as production but cannot load them.
    skops_files = any((state / "models").rglob("*.skops"))
    if tree != REPO and (skops_files or production_count(tree, state, url) < 17):
        print(f"  {tree} cannot read this tree's model files: it trains its own copy",
              flush=True)
        shutil.rmtree(state)
        must(cli(tree, state, url, "train", "--trigger", "daily"), f"train all 17 ({tree})")
    return state


def verdicts(stdout: str) -> str:
    try:
        entry = json.loads(stdout)
    except ValueError:
        return "?"
    counts = Counter(str(m.get("verdict")) for m in entry.get("models", {}).values())
    retrained = sum(1 for m in entry.get("models", {}).values() if m.get("retrain"))
    text = ", ".join(f"{v} {n}" for v, n in counts.most_common())
    return text + (f"; {retrained} retrained" if retrained else "")


def measure(tree: Path, state: Path, url: str, runs: int, check_runs: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for command in ("models", "history", "backups"):
        times = []
        for _ in range(runs):
            seconds, proc = cli(tree, state, url, command, timeout=300)
            if proc.returncode != 0:
                figures[command] = f"exit {proc.returncode}"
                break
            times.append(seconds)
        else:
            figures[command] = statistics.median(times)
    times, notes = [], ""
    for _ in range(check_runs):
        seconds, proc = cli(tree, state, url, "check", "--json")
        if proc.returncode != 0:
            notes = f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
            break
        times.append(seconds)
        notes = verdicts(proc.stdout)
    figures["check"] = statistics.median(times) if times else "failed"
    figures["check_verdicts"] = notes
    return figures


def cell(value: Any) -> str:
    return f"{value:8.2f} s" if isinstance(value, float) else f"{value!s:>10}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE_REF,
                        help="the release to compare with: a git ref of this repository "
                             f"(checked out in a temporary worktree; default {BEFORE_REF}, "
                             "the release before the core was split by concern) or the path "
                             "of a checkout")
    parser.add_argument("--runs", type=int, default=5, help="runs of each read-only command")
    parser.add_argument("--check-runs", type=int, default=3, help="runs of the check")
    parser.add_argument("--days", type=int, default=300)
    parser.add_argument("--fresh-days", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cli-bench-"))
    try:
        print(f"building the state in {root}", flush=True)
        url = build_state(root, args.days, args.fresh_days)
        trees = {"before": before_tree(args.before, root), "now": REPO}
        results: dict[str, dict[str, Any]] = {}
        for label, tree in trees.items():
            if not (tree / "backend" / "ml").is_dir():
                print(f"  no tree at {tree}: skipping '{label}'")
                continue
            print(f"measuring '{label}' ({tree})", flush=True)
            state = prepare(tree, root, f"state-{label}", url)
            results[label] = measure(tree, state, url, args.runs, args.check_runs)
        labels = list(results)
        print()
        print(f"{'command':<28}" + "".join(f"{label:>12}" for label in labels)
              + f"{'target':>10}")
        for command, target in TARGETS.items():
            shown = f"python -m backend.ml {command}"
            print(f"{shown:<28}" + "".join(f"{cell(results[label][command]):>12}"
                                           for label in labels) + f"{target:>8.1f} s")
        print(f"medians of {args.runs} runs (read-only commands) and {args.check_runs} "
              "(check), each in a fresh process")
        for label in labels:
            print(f"check verdicts ({label}): {results[label]['check_verdicts']}")
    finally:
        if (root / "before-tree").exists():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(root / "before-tree")], capture_output=True)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
