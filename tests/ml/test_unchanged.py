"""Unchanged data, unchanged model: a run on the rows and parameters production was fitted
with fits nothing, saves no version and backs nothing up; new rows or a changed parameter
make a new version."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import pytest

from backend.app.schemas import TrainingRecord
from backend.ml import cli
from backend.ml.config import Settings
from backend.ml.data import loading, synthetic
from backend.ml.fleet import specs
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from backend.ml.training import trainer
from backend.ml.training.results import model_outcome

MODEL = "scenario_analysis"  # fast to fit on the small database


def detail_of(summary: dict[str, Any]) -> dict[str, Any]:
    return model_outcome(summary, MODEL)


@pytest.fixture
def runner(small_db: str, tmp_path: Path) -> Runner:
    """A runner on a copy of the session's database, so new rows touch no other test."""
    source = loading.sqlite_path(small_db)
    assert source is not None
    shutil.copy(source, tmp_path / "logistics.db")
    settings = Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'logistics.db'}",
                        MODELS_DIR=tmp_path / "models", LOGS_DIR=tmp_path / "logs",
                        TRAINING_N_JOBS=2)
    return Runner(Services.from_settings(settings))


def test_a_second_run_on_the_same_data_is_unchanged_and_writes_nothing(
        runner: Runner, capsys: pytest.CaptureFixture[str]) -> None:
    services, settings = runner.services, runner.settings
    first = runner.run(models=[MODEL])
    assert first["promoted"] == [MODEL] and first["unchanged"] == []
    fingerprint = services.store.production_meta(MODEL)["data_fingerprint"]
    assert isinstance(fingerprint, str) and len(fingerprint) == 64
    files = sorted(p.name for p in (settings.MODELS_DIR / MODEL).iterdir())

    second = runner.run(models=[MODEL])
    detail = detail_of(second)
    assert second["status"] == "success" and second["unchanged"] == [MODEL]
    assert second["promoted"] == [] and second["models"] == [MODEL]
    assert detail["status"] == "unchanged" and detail["version"] == "v0001"
    assert detail["promoted"] is False and fingerprint[:12] in detail["decision"]
    assert detail["fit_seconds"] == 0  # not fitted: the fingerprint is taken before the fit
    assert detail["score"] == first["model_details"]["advanced_models"][MODEL]["score"]
    assert sorted(p.name for p in (settings.MODELS_DIR / MODEL).iterdir()) == files
    assert services.store.committed(MODEL) == ["v0001"]
    assert not list(settings.LOGS_DIR.glob("backup_*"))
    assert [v["version"] for v in services.history.model_versions(MODEL)] == ["v0001"]
    record = services.history.get_training(second["run_id"])
    assert record is not None and record["unchanged"] == [MODEL]
    assert record["models"] == [MODEL] and record["status"] == "success"
    assert not [a for a in services.history.alerts() if a.get("kind") == "training_failed"]
    # the history row names the run's one model and the one left unchanged, everywhere
    assert TrainingRecord.model_validate(record).models == [MODEL]
    older = {k: v for k, v in record.items() if k != "models"}  # a record from before `models`
    assert TrainingRecord.model_validate(older).models == [MODEL]
    assert cli.cmd_history(argparse.Namespace(limit=5, json=False), settings) == 0
    newest = capsys.readouterr().out.splitlines()[0]
    assert f"models: {MODEL}" in newest and f"unchanged: {MODEL}" in newest, newest

    # A changed parameter is another fit: a new version.
    changed = runner.run(models=[MODEL],
                         options={MODEL: trainer.TrainOptions(params={"max_iter": 150})})
    assert changed["unchanged"] == [] and detail_of(changed)["version"] == "v0002"
    assert services.store.metadata(MODEL, "v0002")["data_fingerprint"] != fingerprint

    # New labelled rows are another fit too.
    synthetic.simulate(loading.writable_engine(settings.DATABASE_URL), days=10)
    fresh = runner.run(models=[MODEL])
    assert fresh["unchanged"] == [] and detail_of(fresh)["version"] == "v0003"
    assert detail_of(fresh)["rows"]["train"] > detail_of(first)["rows"]["train"]


def test_the_fingerprint_follows_rows_and_parameters(small_tables: dict[str, Any]) -> None:
    spec = specs.get_spec(MODEL)
    table = small_tables[spec.table]
    labelled, _ = trainer.labelled_frame(spec, table)
    plain = trainer.TrainOptions()
    same = trainer.data_fingerprint(spec, labelled, plain)
    assert trainer.data_fingerprint(spec, labelled.copy(), plain) == same
    assert trainer.data_fingerprint(spec, labelled.iloc[:-1], plain) != same
    touched = labelled.copy()
    touched.iloc[5, touched.columns.get_loc(spec.target)] += 1.0
    assert trainer.data_fingerprint(spec, touched, plain) != same
    assert trainer.data_fingerprint(
        spec, labelled, trainer.TrainOptions(params={"max_iter": 150})) != same

    skipped = trainer.train_one(spec, table, threshold=0.5, production_fingerprint=same)
    assert skipped.unchanged and skipped.estimator is None and skipped.score is None
    assert skipped.data_fingerprint == same and skipped.rows_train > 0
