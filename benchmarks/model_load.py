"""How much does loading without running code cost? skops against joblib, for the 17.

Trains the 17 models once on a small generated database in a temporary folder (or reads
the production versions of an existing `--models-dir`), then, for each model, times over
`--reps` repetitions: `ModelStore.load` (signature, SHA-256, then skops with the spec's
allow-list, as the service does), and `joblib.load` of the same fitted Pipeline pickled.
Prints per-model medians, the totals and their ratio, and the file sizes.

    PYTHONPATH=. .venv/bin/python benchmarks/model_load.py [--json] [--reps 5]
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import joblib

from backend.ml.data import loading, synthetic
from backend.ml.fleet import specs
from backend.ml.registry.signing import Signer, signer_from_file
from backend.ml.registry.store import ModelStore
from backend.ml.training import trainer


def train_all(root: Path) -> Path:
    url = f"sqlite:///{root / 'bench.db'}"
    synthetic.init_db(loading.writable_engine(url), days=300, end=date(2026, 10, 31), seed=42)
    tables = trainer.load_tables(loading.readonly_engine(url), specs.SPECS.values())
    chosen = list(specs.SPECS.values())
    store = ModelStore(root / "models", signer=signer_from_file(key_file(root)))
    thresholds = {s.name: specs.threshold_for(s, 0.70) for s in chosen}
    for result in trainer.train_many(chosen, tables, thresholds=thresholds, n_jobs=2):
        meta = store.save(result, run_id="bench")
        store.promote(result.name, meta["version"], reason="benchmark", actor="cli")
    return root / "models"


def median_seconds(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def key_file(root: Path) -> Path:
    """A key of this benchmark's own: it never creates or reads the repository's."""
    path = root / "model_signing.key"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path


def measure(models_dir: Path, reps: int, signer: Signer | None) -> dict[str, Any]:
    store = ModelStore(models_dir, signer=signer)
    rows = []
    for name in specs.MODEL_NAMES:
        estimator, meta = store.load(name)
        buffer = io.BytesIO()
        joblib.dump(estimator, buffer)
        pickled = buffer.getvalue()
        rows.append({
            "model": name, "format": meta.get("format", "joblib"),
            "store_load_s": median_seconds(lambda n=name: store.load(n), reps),
            "joblib_load_s": median_seconds(lambda b=pickled: joblib.load(io.BytesIO(b)), reps),
            "stored_bytes": meta["size_bytes"], "pickle_bytes": len(pickled)})
    total_store = sum(r["store_load_s"] for r in rows)
    total_joblib = sum(r["joblib_load_s"] for r in rows)
    return {"models": rows, "total_store_load_s": round(total_store, 3),
            "total_joblib_load_s": round(total_joblib, 3),
            "ratio": round(total_store / total_joblib, 2),
            "stored_mb": round(sum(r["stored_bytes"] for r in rows) / 2**20, 1),
            "pickle_mb": round(sum(r["pickle_bytes"] for r in rows) / 2**20, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, help="an existing store (default: train)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # An existing store is read with the settings' key, as the service reads it.
        models_dir = args.models_dir or train_all(Path(tmp))
        signer = None if args.models_dir else signer_from_file(key_file(Path(tmp)))
        report = measure(models_dir, args.reps, signer)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'model':<26}{'format':>8}{'store ms':>10}{'joblib ms':>11}{'stored KB':>11}"
          f"{'pickle KB':>11}")
    for r in report["models"]:
        print(f"{r['model']:<26}{r['format']:>8}{r['store_load_s'] * 1000:>10.1f}"
              f"{r['joblib_load_s'] * 1000:>11.1f}{r['stored_bytes'] / 1024:>11.0f}"
              f"{r['pickle_bytes'] / 1024:>11.0f}")
    print(f"all 17: store.load {report['total_store_load_s']:.2f} s, joblib.load "
          f"{report['total_joblib_load_s']:.2f} s, ratio {report['ratio']:.2f}x; files "
          f"{report['stored_mb']} MB stored, {report['pickle_mb']} MB as pickles")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
