"""The real-data example end to end: co2_weekly (weekly Mauna Loa CO2, as shipped in the
statsmodels wheel) ingested into its own table beside the plant's, trained, versioned,
checked on its own later rows and retrained, while the plant's models stay as they were.

`EXAMPLE_MODELS=co2_weekly` adds the spec when the registry is imported; this test process
imported it long before, so a fixture adds the same spec to the registry for the module.
Training runs in this process (`TRAINING_N_JOBS=1`): a pool's workers would have imported
the registry without it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from backend.ml.config import Settings
from backend.ml.data import ingest, loading, schema
from backend.ml.fleet import examples, specs
from backend.ml.monitoring.check import Monitor
from backend.ml.runs.runner import Runner
from backend.ml.runs.services import Services
from backend.ml.training import trainer
from tests.ml import test_specs

statsmodels_co2 = pytest.importorskip("statsmodels.datasets.co2")

SPLIT = pd.Timestamp("1996-01-01")  # trained on the weeks before, checked on those after
PLANT_MODEL = "cost_prediction"


@pytest.fixture(scope="module")
def co2_enabled() -> Iterator[specs.ModelSpec]:
    spec = examples.co2_weekly()
    assert spec.table_decl is not None
    schema.register_table(spec.table_decl)
    specs.SPECS[spec.name] = spec
    specs.MODEL_NAMES.append(spec.name)
    specs.MODEL_NAMES.sort()
    try:
        yield spec
    finally:
        del specs.SPECS[spec.name]
        specs.MODEL_NAMES.remove(spec.name)


def export_co2(folder: Path) -> tuple[Path, Path, pd.DataFrame]:
    """The dataset as two CSV files (before and after SPLIT). Weeks without a measurement
    (59 of 2,284) are dropped, not filled: the lags are taken by date, so a missing week
    leaves the rows that would read it without a lag, never with the wrong week's."""
    data = statsmodels_co2.load_pandas().data.dropna()
    frame = pd.DataFrame({"week_ending": data.index.strftime("%Y-%m-%d"),
                          "co2_ppm": data["co2"].to_numpy()})
    before, after = folder / "co2_until_1995.csv", folder / "co2_from_1996.csv"
    when = pd.to_datetime(frame.week_ending)
    frame[when < SPLIT].to_csv(before, index=False)
    frame[when >= SPLIT].to_csv(after, index=False)
    return before, after, frame


def test_co2_weekly_trains_checks_and_retrains_on_its_own_rows(
        co2_enabled: specs.ModelSpec, small_db: str, tmp_path: Path) -> None:
    spec = co2_enabled
    db = tmp_path / "plant.db"
    shutil.copy(loading.sqlite_path(small_db) or "", db)  # the plant's tables, and co2's
    url = f"sqlite:///{db}"
    before, after, frame = export_co2(tmp_path)
    assert len(frame) == 2225  # 2,284 weeks, 59 without a measurement

    engine = loading.writable_engine(url)
    first = ingest.ingest(engine, "co2_weekly", before)
    assert first.created and str(first.first) == "1958-03-29 00:00:00"
    settings = Settings(DATABASE_URL=url, MODELS_DIR=tmp_path / "models",
                        LOGS_DIR=tmp_path / "logs", TRAINING_N_JOBS=1)
    runner = Runner(Services.from_settings(settings))
    store = runner.services.store
    runner.run(models=[PLANT_MODEL])
    plant_meta = store.production_meta(PLANT_MODEL)
    assert plant_meta is not None

    run = runner.run(models=["co2_weekly"])
    assert run["promoted"] == ["co2_weekly"], run
    meta = store.production_meta("co2_weekly")
    assert meta is not None and meta["version"] == "v0001", run
    score, baseline = float(meta["score"]), float(meta["baseline"])
    print(f"\nco2_weekly v0001: r2 {score:.4f}, baseline {baseline:.4f}, "
          f"lift {score - baseline:.4f}, holdout from {meta['holdout_start']}")
    assert score >= 0.95 and score - baseline > 1.0  # the trend leaves the mean far behind
    assert pd.Timestamp(meta["data_end"]) < SPLIT
    assert store.metadata("co2_weekly", "v0001")["format"] == "skops"

    later = ingest.ingest(engine, "co2_weekly", after)
    entry = Monitor(runner, backoff_seconds=0).run_check()["models"]
    checked = entry["co2_weekly"]
    # Every later week with its three lags is scored: the fresh window reaches 52 weeks back.
    labelled, _ = trainer.labelled_frame(spec, loading.load_table(
        loading.readonly_engine(url), "co2_weekly"))
    expected = int((labelled.week_ending >= SPLIT).sum())
    assert checked["verdict"] == "healthy" and checked["samples"] == expected, checked
    assert expected > later.rows - 20 and checked["live_score"] >= spec.threshold
    print(f"co2_weekly check on {expected} later weeks: r2 {checked['live_score']:.4f}")

    runner.run(models=["co2_weekly"], trigger="daily", actor="scheduler")
    versions = {m["version"]: m for m in store.versions("co2_weekly")}
    assert set(versions) == {"v0001", "v0002"}
    # Trained and held out on the later weeks too: its holdout ends with the last week.
    assert pd.Timestamp(versions["v0002"]["data_end"]) == pd.Timestamp("2001-12-29")
    assert versions["v0002"]["score"] >= spec.threshold
    print(f"co2_weekly v0002: r2 {versions['v0002']['score']:.4f}, baseline "
          f"{versions['v0002']['baseline']:.4f}, holdout from "
          f"{versions['v0002']['holdout_start']}, production "
          f"{store.aliases('co2_weekly')['production']}")

    assert store.production_meta(PLANT_MODEL) == plant_meta  # the plant's model untouched
    for name in specs.MODEL_NAMES:
        if name not in ("co2_weekly", PLANT_MODEL):
            assert store.aliases(name)["production"] is None, name


def test_co2_weekly_features_pass_the_leakage_guards(co2_enabled: specs.ModelSpec,
                                                     tmp_path: Path) -> None:
    """The plant's guards, on the example: features are context or earlier rows only."""
    _, _, frame = export_co2(tmp_path)
    table = frame.assign(week_ending=pd.to_datetime(frame.week_ending))
    test_specs.test_no_feature_is_an_outcome_an_id_or_derived_from_the_target("co2_weekly")
    test_specs.test_features_do_not_move_when_outcomes_of_the_same_rows_change(
        "co2_weekly", {"co2_weekly": table})
    assert schema.column_role("co2_weekly", "co2_ppm") == "outcome"
    assert schema.key_columns("co2_weekly") == ("week_ending",)
    assert "co2_weekly" not in schema.GENERATED
