"""Shadow scoring of candidates behind predict (backend/app/shadow.py), on the trained
setup: candidates are versions saved through the store (copies of stored fits), and the
only fake is slowness (a candidate that sleeps before it predicts)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from backend.app.routes.models import feature_frame
from backend.app.shadow import ShadowScorer
from backend.ml.config import Settings, describe_invalid
from backend.ml.data import loading
from backend.ml.fleet import specs
from backend.ml.registry.store import ModelStore
from backend.ml.runs.services import Services
from backend.ml.training import trainer
from tests.app.conftest import (
    ClientFactory,
    app_settings,
    build_app,
    fresh_copy,
    ok,
    settings_for,
)
from tests.app.test_metrics import scrape
from tests.app.test_models import records
from tests.fakes import Slow

# Candidate made for each model. The classifier's is a coarser fit (3 boosting rounds),
# so it disagrees with production on some rows; the others are copies of production, so
# they agree on every row.
CANDIDATES = {"supplier_performance": "v0003", "scenario_analysis": "v0002",
              "anomaly_detection": "v0002"}
COARSE = "supplier_performance"
NO_CANDIDATE = "decision_support"
SUMMARY_KEYS = {"candidate", "compared", "agreed", "agreement", "batches", "dropped",
                "timeouts", "errors", "skipped"}


def copy_version(store: ModelStore, name: str, version: str) -> str:
    """Save the stored fit `version` again as the next version (a candidate, not promoted)."""
    model_path, _ = store.paths(name, version)
    meta = store.verify(name, version)
    return str(store.import_version(name, model_path.read_bytes(), meta)["version"])


@pytest.fixture(scope="module")
def coarse_fit(small_db: str) -> trainer.TrainResult:
    spec = specs.get_spec(COARSE)
    table = trainer.load_tables(loading.readonly_engine(small_db), [spec])[spec.table]
    result = trainer.train_one(spec, table, threshold=0.0,
                               options=trainer.TrainOptions(params={"max_iter": 3}))
    assert result.ok, result.error
    return result


@pytest.fixture
def add_candidates(coarse_fit: trainer.TrainResult) -> Callable[[Settings], None]:
    def add(settings: Settings) -> None:
        store = Services.from_settings(settings).store
        made = {COARSE: store.save(coarse_fit, run_id="shadow-test")["version"]}
        for name in CANDIDATES:
            if name != COARSE:
                made[name] = copy_version(store, name, "v0001")
        assert made == CANDIDATES

    return add


def scorer_of(client: TestClient) -> ShadowScorer:
    scorer = client.app.state.shadow  # type: ignore[attr-defined]
    assert scorer is not None
    return scorer


def settle(scorer: ShadowScorer, name: str, batches: int,
           timeout: float = 60.0) -> dict[str, Any]:
    """The summary once `batches` batches of `name` were taken and the queue is empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary = scorer.summary(name)
        if summary is not None and summary["batches"] >= batches and scorer.queue.empty():
            return summary
        time.sleep(0.02)
    raise AssertionError(f"{name}: shadow did not take {batches} batches: "
                         f"{scorer.summary(name)}")


def shadow_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "shadow-scorer"]


def test_shadow_answers_like_production_and_records_agreement(
        trained_root: Path, small_db: str, tmp_path: Path, make_client: ClientFactory,
        add_candidates: Callable[[Settings], None], coarse_fit: trainer.TrainResult) -> None:
    off = make_client(prepare=add_candidates)
    settings = settings_for(fresh_copy(trained_root, tmp_path / "on"), small_db,
                            SHADOW_CANDIDATES=True)
    add_candidates(settings)
    rows = {name: records(small_db, name, n=40) for name in [*CANDIDATES, NO_CANDIDATE]}
    with TestClient(build_app(settings)) as on:
        scorer = scorer_of(on)
        assert scorer.running and len(shadow_threads()) == 1
        for name, body in rows.items():
            with_shadow = ok(on.post(f"/ml/models/{name}/predict", json={"records": body}))
            without = ok(off.post(f"/ml/models/{name}/predict", json={"records": body}))
            assert with_shadow == without  # same predictions, version and served_as
            assert with_shadow["served_as"] == "production"
        # What the candidate should have said, from the fit itself, against production.
        labels = settle(scorer, COARSE, 1)
        production = ok(off.post(f"/ml/models/{COARSE}/predict",
                                 json={"records": rows[COARSE]}))["predictions"]
        assert coarse_fit.estimator is not None
        coarse = coarse_fit.estimator.predict(feature_frame(specs.get_spec(COARSE),
                                                            rows[COARSE]))
        same = int(np.sum(coarse == np.asarray(production)))
        assert set(labels) == SUMMARY_KEYS
        assert labels | {"agreement": None} == {
            "candidate": "v0003", "compared": 40, "agreed": same, "agreement": None,
            "batches": 1, "dropped": 0, "timeouts": 0, "errors": 0, "skipped": 0}
        assert labels["agreement"] == pytest.approx(same / 40)
        assert same < 40, "the coarse fit should disagree somewhere, or this proves little"

        values = settle(scorer, "scenario_analysis", 1)
        assert set(values) == SUMMARY_KEYS | {"mean_abs_difference"}
        assert (values["candidate"], values["compared"], values["agreement"],
                values["mean_abs_difference"]) == ("v0002", 40, 1.0, 0.0)
        anomaly = settle(scorer, "anomaly_detection", 1)
        assert (anomaly["candidate"], anomaly["agreed"], anomaly["agreement"]) == (
            "v0002", 40, 1.0)
        skipped = settle(scorer, NO_CANDIDATE, 1)
        assert (skipped["candidate"], skipped["skipped"], skipped["compared"],
                skipped["agreement"]) == (None, 1, 0, None)

        families = scrape(on)
        batches = {s.labels["model"]: s.value for s in
                   families["ml_shadow_batches"].samples if s.name.endswith("_total")}
        assert batches == dict.fromkeys([*CANDIDATES, NO_CANDIDATE], 1.0)
        agreement = {(s.labels["model"], s.labels["candidate"]): s.value
                     for s in families["ml_shadow_agreement"].samples}
        assert agreement == {(COARSE, "v0003"): pytest.approx(same / 40),
                             ("scenario_analysis", "v0002"): 1.0,
                             ("anomaly_detection", "v0002"): 1.0}
        assert [s.value for s in families["ml_shadow_skipped"].samples
                if s.labels["model"] == NO_CANDIDATE and s.name.endswith("_total")] == [1.0]
        assert families["ml_shadow_enabled"].samples[0].value == 1.0
        # The candidate's card and production's show the agreement; an older version's not.
        production = scorer.store.aliases(COARSE)["production"]
        other = ({"v0001", "v0002"} - {production}).pop()
        for version, shown in (("v0003", True), (production, True), (other, False)):
            response = on.get(f"/ml/models/{COARSE}/versions/{version}/card",
                              headers={"Accept": "text/markdown"})
            assert response.status_code == 200, response.text
            card = response.text
            assert ("Shadow scoring" in card) is shown, version
            assert (f"{same / 40:.1%}" in card) is shown, card
    assert not scorer.running and not shadow_threads()  # stopped with the app


def test_a_slow_candidate_neither_grows_the_queue_nor_delays_predict(
        make_client: ClientFactory, small_db: str,
        add_candidates: Callable[[Settings], None]) -> None:
    client = make_client(prepare=add_candidates, SHADOW_CANDIDATES=True,
                         SHADOW_QUEUE_SIZE=2, SHADOW_TIMEOUT_SECONDS=1)
    scorer = scorer_of(client)
    name, version = "scenario_analysis", CANDIDATES["scenario_analysis"]
    estimator, _ = scorer.store.load(name, version)
    scorer.estimators[name] = (version, Slow(estimator, 2.0))  # in the shadow's own cache
    body = {"records": records(small_db, name, n=5)}
    calls = 8
    for _ in range(calls):
        started = time.monotonic()
        ok(client.post(f"/ml/models/{name}/predict", json=body))
        # The candidate sleeps 2 s per batch: a predict that waited for it would take
        # that long. (The first call also loads production, slower on a loaded machine.)
        assert time.monotonic() - started < 1.5
        assert scorer.queue.qsize() <= 2
    during = scorer.summary(name)
    assert during is not None and during["dropped"] >= 1
    # Every call is accounted for: taken by the worker, or dropped at the full queue.
    deadline = time.monotonic() + 60
    while True:
        summary = scorer.summary(name)
        assert summary is not None
        if summary["batches"] + summary["dropped"] == calls or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert summary["batches"] + summary["dropped"] == calls, summary
    assert summary["timeouts"] == summary["batches"] >= 1  # each took 2 s > 1 s: discarded
    assert (summary["compared"], summary["agreement"], summary["errors"]) == (0, None, 0)
    counted = {s.name: s.value for s in scrape(client)["ml_shadow_timeouts"].samples
               if s.labels["model"] == name}
    assert counted["ml_shadow_timeouts_total"] == summary["timeouts"]


def test_shadow_off_runs_nothing(make_client: ClientFactory, small_db: str,
                                add_candidates: Callable[[Settings], None]) -> None:
    client = make_client(prepare=add_candidates)
    assert not app_settings(client).SHADOW_CANDIDATES  # the default
    ok(client.post("/ml/models/scenario_analysis/predict",
                   json={"records": records(small_db, "scenario_analysis", n=3)}))
    assert client.app.state.shadow is None  # type: ignore[attr-defined]
    assert not shadow_threads()
    shadow = [s for f in scrape(client).values() if f.name.startswith("ml_shadow_")
              for s in f.samples]
    assert shadow and all(s.value == 0 for s in shadow), shadow


def test_a_sample_rate_offers_only_its_share(tmp_path: Path) -> None:
    scorer = ShadowScorer(ModelStore(tmp_path / "models"), queue_size=1000, timeout=5,
                          sample_rate=0.2, seed=0)  # not started: the batches stay queued
    spec = specs.get_spec("scenario_analysis")
    taken = sum(scorer.offer(spec, pd.DataFrame(), np.zeros(0), None, "v0001")
                for _ in range(1000))
    assert taken == scorer.queue.qsize() and 100 < taken < 300
    assert scorer.summary(spec.name) is None  # not sampled is neither dropped nor counted


@pytest.mark.parametrize(("variable", "value"), [
    ("SHADOW_QUEUE_SIZE", 0), ("SHADOW_QUEUE_SIZE", 10_001),
    ("SHADOW_TIMEOUT_SECONDS", 0), ("SHADOW_TIMEOUT_SECONDS", 601),
    ("SHADOW_SAMPLE_RATE", 0), ("SHADOW_SAMPLE_RATE", 1.5)])
def test_shadow_bounds_are_checked(variable: str, value: float) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**{variable: value})  # type: ignore[arg-type]
    assert describe_invalid(caught.value).startswith(f"invalid configuration: {variable}: ")
