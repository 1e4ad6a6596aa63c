"""A scripted sequence of what happens to a model, written through the core's own writers
(monitor state, history, registry, training lock and progress), and the health state each
step must show in every view. Used by the API/metrics/CLI test and the browser test."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from backend.ml.config import Settings
from backend.ml.fsio import file_lock
from backend.ml.history import History
from backend.ml.monitoring.state import monitor_file
from backend.ml.registry.store import ModelStore
from backend.ml.runs.progress import RunProgress

# supplier_performance is trained twice in the app fixtures: production v0002, previous
# v0001. customer_satisfaction is never trained there.
MODEL = "supplier_performance"
FRESH = "customer_satisfaction"


@dataclass(frozen=True)
class Step:
    name: str
    model: str
    apply: Callable[[Settings, contextlib.ExitStack], None]
    expected: str


def serving(settings: Settings) -> str:
    version = ModelStore(settings.MODELS_DIR).aliases(MODEL)["production"]
    assert version is not None
    return version


def set_monitor(settings: Settings, **entry: object) -> None:
    with monitor_file(settings.LOGS_DIR).update() as state:
        state.root[MODEL] = state.of(MODEL).model_validate(entry)


def check_entry(settings: Settings, verdict: str, version: str, **extra: object) -> None:
    History(settings.history_file).append_check({
        "check_id": f"check-{verdict}-{version}",
        "models": {MODEL: {"version": version, "threshold": 0.5, "samples": 200,
                           "live_score": 0.3 if verdict != "healthy" else 0.9,
                           "verdict": verdict, **extra}}})


def healthy(settings: Settings, stack: contextlib.ExitStack) -> None:
    set_monitor(settings, verdict="healthy", version=serving(settings))


def below_once(settings: Settings, stack: contextlib.ExitStack) -> None:
    check_entry(settings, "watch", serving(settings))
    set_monitor(settings, verdict="watch", version=serving(settings))


def degraded(settings: Settings, stack: contextlib.ExitStack) -> None:
    check_entry(settings, "degraded", serving(settings))
    set_monitor(settings, verdict="degraded", version=serving(settings))


def recovered_in_the_same_check(settings: Settings, stack: contextlib.ExitStack) -> None:
    """The check found v0002 degraded, a retrain promoted a good version in the same check:
    the check entry says degraded (about v0002), the monitor says healthy about the new."""
    store = ModelStore(settings.MODELS_DIR)
    store.rollback(MODEL, to="v0001", actor="scheduler", reason="stands in for a retrain")
    check_entry(settings, "degraded", "v0002", retrain={"recovered": True})
    set_monitor(settings, verdict="healthy", version="v0001")


def exhausted(settings: Settings, stack: contextlib.ExitStack) -> None:
    until = datetime.now(UTC) + timedelta(hours=6)
    set_monitor(settings, verdict="degraded", version=serving(settings),
                cooldown={"newest_data": "2026-10-31", "until": until.isoformat()})


def nightly_run(settings: Settings, stack: contextlib.ExitStack) -> None:
    """A daily run holds the training lock (in this process) and lists every model."""
    set_monitor(settings, verdict="healthy", version=serving(settings))
    run_id = "run-nightly-test"
    stack.enter_context(file_lock(settings.LOGS_DIR / "training.lock", timeout=5,
                                  purpose=f"run_id={run_id} daily"))
    progress = RunProgress(run_id=run_id, trigger="daily", started_at=datetime.now(UTC)
                           .isoformat(), total=2, done=0, in_flight=[MODEL, FRESH],
                           finished=[], models=[MODEL, FRESH])
    path = settings.LOGS_DIR / "training_progress.json"
    path.write_text(progress.model_dump_json())
    stack.callback(path.unlink, missing_ok=True)


def nothing_yet(settings: Settings, stack: contextlib.ExitStack) -> None:
    pass


def first_version_below_threshold(settings: Settings, stack: contextlib.ExitStack) -> None:
    """A first version that scored under its threshold serves: nothing better exists."""
    store = ModelStore(settings.MODELS_DIR)
    donor = store.production_meta(MODEL)
    assert donor is not None
    payload = store.paths(MODEL, donor["version"])[0].read_bytes()
    meta = {k: v for k, v in donor.items() if k not in ("name", "version", "sha256")}
    saved = store.import_version(FRESH, payload, {**meta, "score": 0.41, "passed": False,
                                                  "threshold": 0.7})
    store.promote(FRESH, saved["version"], reason="first version", actor="scheduler")


STEPS = [
    Step("healthy", MODEL, healthy, "healthy"),
    Step("below threshold once", MODEL, below_once, "watch"),
    Step("degraded", MODEL, degraded, "degraded"),
    Step("recovered in the same check", MODEL, recovered_in_the_same_check, "healthy"),
    Step("retrains exhausted", MODEL, exhausted, "cooling_down"),
    Step("routine nightly run", MODEL, nightly_run, "training"),
    Step("never trained", FRESH, nothing_yet, "no_version"),
    Step("first version below threshold", FRESH, first_version_below_threshold,
         "below_threshold"),
]


# Thresholds that make the scripted states exact whatever the small database's scores are.
THRESHOLDS = {MODEL: 0.05, FRESH: 0.7}


def cli_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": settings.DATABASE_URL,
            "MODELS_DIR": str(settings.MODELS_DIR), "LOGS_DIR": str(settings.LOGS_DIR),
            "MODEL_THRESHOLDS": json.dumps(settings.MODEL_THRESHOLDS)}
