"""The model store: versions, checksums, aliases, the promotion gate, rollback, retention."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from backend.ml.fleet import specs
from backend.ml.fleet.specs import UnknownModelError
from backend.ml.registry.promotion import promotion_decision
from backend.ml.registry.store import (
    ChecksumError,
    ModelStore,
    NoProductionModelError,
    StoreError,
    UnknownVersionError,
)
from backend.ml.training.trainer import TrainResult

NAME = "scenario_analysis"
SPEC = specs.get_spec(NAME)


def features(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "yard": rng.choice(["bokaro", "cmo_durgapur", "cmo_kolkata"], n),
        "shift": rng.choice(["A", "B", "C"], n),
        "action_taken": rng.choice(["dispatch_rail", "dispatch_road", "hold"], n),
        "rakes_available": rng.integers(0, 12, n), "trucks_available": rng.integers(0, 80, n),
        "demand_surge": rng.integers(0, 2, n), "yard_closure": rng.integers(0, 2, n),
        "weather_alert": rng.integers(0, 2, n), "stock_level_pct": rng.uniform(10, 95, n),
        "pending_orders": rng.integers(0, 40, n)})


def fit(slope: float) -> Pipeline:
    X = features()
    estimator = SPEC.make_estimator(max_iter=5)
    estimator.fit(X, slope * X["rakes_available"].to_numpy(dtype=float) + 50)
    return estimator


@pytest.fixture(scope="module")
def estimators() -> tuple[Pipeline, Pipeline]:
    """Two cheap fits whose predictions differ clearly (rising vs falling with rakes)."""
    return fit(100.0), fit(-100.0)


def result(estimator: Pipeline | None, *, score: float = 0.8, passed: bool = True) -> TrainResult:
    return TrainResult(NAME, SPEC.group, SPEC.metric, 0.58, status="ok", score=score,
                       baseline=0.1, passed=passed, rows_train=160, rows_holdout=40,
                       data_start="2026-01-01T00:00:00", data_end="2026-03-01T00:00:00",
                       holdout_start="2026-02-15T00:00:00", params={"max_iter": 5},
                       feature_stats={"stock_level_pct": {"kind": "numeric", "mean": 50.0}},
                       estimator=estimator)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


def saved_and_promoted(ms: ModelStore, *ests: Pipeline, run: str = "r") -> list[str]:
    versions = []
    for i, est in enumerate(ests):
        version = ms.save(result(est), run_id=f"{run}{i}")["version"]
        ms.promote(NAME, version, reason="test", actor="cli")
        versions.append(version)
    return versions


def flip_byte(path: Path, at: int = -10) -> None:
    payload = bytearray(path.read_bytes())
    payload[at] ^= 0xFF
    path.write_bytes(bytes(payload))


def spy_on_deserializers(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """A list that gets every payload handed to skops or joblib to load."""
    import skops.io

    seen: list[object] = []
    for module, attr in ((skops.io, "loads"), (joblib, "load")):
        real = getattr(module, attr)

        def spy(source: object, *args: object, _real: object = real, **kw: object) -> object:
            seen.append(source)
            return _real(source, *args, **kw)  # type: ignore[operator]

        monkeypatch.setattr(module, attr, spy)
    return seen


def predict(estimator: Pipeline) -> np.ndarray:
    return np.asarray(estimator.predict(features(5, seed=1)))


# ---- save and load ---------------------------------------------------------------------------


def test_save_load_round_trip(models_dir: Path, estimators: tuple[Pipeline, Pipeline]) -> None:
    ms = ModelStore(models_dir)
    meta = ms.save(result(estimators[0]), run_id="run-1")
    assert meta["version"] == "v0001" and meta["run_id"] == "run-1" and meta["name"] == NAME
    for key in ("created_at", "metric", "score", "baseline", "threshold", "passed", "strategy",
                "params", "data_start", "data_end", "holdout_start", "rows_train",
                "rows_holdout", "feature_stats", "sha256", "size_bytes"):
        assert key in meta, key
    assert set(meta["libraries"]) == {"python", "scikit-learn", "joblib", "skops"}
    assert meta["format"] == "skops" and meta["signature"] and meta["key_id"]
    model_file = models_dir / NAME / "v0001.skops"
    assert meta["size_bytes"] == model_file.stat().st_size
    assert stat.S_IMODE(model_file.stat().st_mode) == 0o640
    assert stat.S_IMODE((models_dir / NAME / "v0001.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((models_dir / NAME).stat().st_mode) & 0o027 == 0  # 0750 or tighter

    with pytest.raises(NoProductionModelError, match=NAME):
        ms.load(NAME)
    estimator, loaded = ms.load(NAME, "v0001")
    assert loaded == meta
    np.testing.assert_allclose(predict(estimator), predict(estimators[0]))

    entry = ms.promote(NAME, "v0001", reason="first version", actor="scheduler")
    assert entry["from"] is None and entry["to"] == "v0001" and entry["action"] == "promote"
    assert ms.load(NAME)[1]["version"] == "v0001"
    assert ms.production_meta(NAME)["version"] == "v0001"  # type: ignore[index]
    assert [v["state"] for v in ms.versions(NAME)] == ["production"]


def test_failed_fit_and_bad_ids_are_refused(models_dir: Path) -> None:
    ms = ModelStore(models_dir)
    failed = result(None)
    failed.status, failed.error = "failed", "too few rows"
    with pytest.raises(StoreError, match="too few rows"):
        ms.save(failed, run_id="r")
    with pytest.raises(UnknownVersionError, match="not a version id"):
        ms.load(NAME, "../../etc/passwd")
    with pytest.raises(UnknownModelError, match="delay_prediction"):
        ms.load("../registry", "v0001")
    assert not models_dir.exists()


def test_checksum_mismatch_is_refused_before_unpickling_and_serving_falls_back(
        models_dir: Path, estimators: tuple[Pipeline, Pipeline],
        monkeypatch: pytest.MonkeyPatch) -> None:
    ms = ModelStore(models_dir)
    saved_and_promoted(ms, *estimators)
    assert ms.aliases(NAME) == {"production": "v0002", "previous": "v0001"}
    flip_byte(models_dir / NAME / "v0002.skops")

    unpickled = spy_on_deserializers(monkeypatch)
    with pytest.raises(ChecksumError) as caught:
        ms.load(NAME)
    assert unpickled == []  # the tampered pickle was never opened
    message = str(caught.value)
    assert NAME in message and "v0002" in message and str(models_dir / NAME) in message

    alerts: list[tuple[str, str, str]] = []
    served = ms.load_serving(NAME, lambda *a: alerts.append(a))
    assert served is not None
    estimator, meta = served
    assert meta["version"] == "v0001" and meta["served_as"] == "previous"
    np.testing.assert_allclose(predict(estimator), predict(estimators[0]))
    assert len(alerts) == 1 and alerts[0][0] == "critical" and "v0002" in alerts[0][2]
    assert len(unpickled) == 1  # v0001 only
    assert ms.aliases(NAME)["production"] == "v0002"  # a reader never moves aliases

    flip_byte(models_dir / NAME / "v0001.skops")
    alerts.clear()
    assert ms.load_serving(NAME, lambda *a: alerts.append(a)) is None
    assert len(alerts) == 1 and "nothing is served" in alerts[0][2]


def test_a_repeated_load_reuses_the_verified_model_and_still_checks_the_file(
        models_dir: Path, estimators: tuple[Pipeline, Pipeline],
        monkeypatch: pytest.MonkeyPatch) -> None:
    ms = ModelStore(models_dir, keep_loaded=True)
    saved_and_promoted(ms, estimators[0])
    unpickled = spy_on_deserializers(monkeypatch)
    first, _ = ms.load(NAME)
    again, _ = ms.load(NAME)
    assert len(unpickled) == 1 and again is not first  # a copy, deserialised once
    ModelStore(models_dir).load(NAME)
    ModelStore(models_dir).load(NAME)
    assert len(unpickled) == 3  # by default nothing is kept
    np.testing.assert_allclose(predict(again), predict(estimators[0]))
    flip_byte(models_dir / NAME / "v0001.skops")
    with pytest.raises(ChecksumError):
        ms.load(NAME)


def test_an_unreadable_registry_is_rebuilt_from_the_audit_and_production_serves(
        models_dir: Path, estimators: tuple[Pipeline, Pipeline]) -> None:
    recoveries = []
    ms = ModelStore(models_dir, on_recover=recoveries.append)
    saved_and_promoted(ms, *estimators)
    ms.rollback(NAME, actor="cli")  # production v0001, previous v0002
    before = ms.aliases(NAME)
    ms.registry_path.write_text("{not json")
    alerts: list[tuple[str, str, str]] = []
    served = ms.load_serving(NAME, lambda *a: alerts.append(a))
    assert served is not None and served[1]["version"] == "v0001"
    assert served[1]["served_as"] == "production" and alerts == []
    assert ms.aliases(NAME) == before
    assert len(recoveries) == 1 and recoveries[0].moved_to.exists()
    assert "scenario_analysis v0001" in recoveries[0].rebuilt
    ms.save(result(estimators[0]), run_id="r")  # numbering goes on from the files
    assert ms.committed(NAME)[-1] == "v0003"


def test_nothing_promoted_serves_nothing_without_alert(models_dir: Path,
                                                       estimators: tuple[Pipeline, Pipeline]
                                                       ) -> None:
    ms = ModelStore(models_dir)
    alerts: list[tuple[str, str, str]] = []
    assert ms.load_serving(NAME, lambda *a: alerts.append(a)) is None
    ms.save(result(estimators[0]), run_id="r")
    assert ms.load_serving(NAME, lambda *a: alerts.append(a)) is None and alerts == []


def test_orphan_model_file_is_ignored_and_its_number_not_reused(
        models_dir: Path, estimators: tuple[Pipeline, Pipeline]) -> None:
    ms = ModelStore(models_dir)
    ms.save(result(estimators[0]), run_id="r1")
    orphan = models_dir / NAME / "v0002.skops"  # a crash between the two writes of a save
    orphan.write_bytes(b"half a pickle")
    assert [v["version"] for v in ms.versions(NAME)] == ["v0001"]
    assert ms.committed(NAME) == ["v0001"]
    with pytest.raises(UnknownVersionError, match="v0002"):
        ms.load(NAME, "v0002")
    assert ms.save(result(estimators[1]), run_id="r2")["version"] == "v0003"
    assert orphan in ms.prune(NAME) and not orphan.exists()
    assert ms.committed(NAME) == ["v0001", "v0003"]


def test_concurrent_saves_get_distinct_versions(models_dir: Path,
                                                estimators: tuple[Pipeline, Pipeline]) -> None:
    ms = ModelStore(models_dir)
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(
        ms.save(result(estimators[0]), run_id="r")["version"])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == ["v0001", "v0002", "v0003", "v0004"]


# ---- promotion gate --------------------------------------------------------------------------


@pytest.mark.parametrize(("score", "passed", "production", "promote", "words"), [
    (0.85, True, 0.80, True, "vs production 0.8000"),
    (0.70, True, 0.80, False, "worse than production"),
    (0.797, True, 0.80, True, "tolerance 0.005"),
    (0.50, False, 0.60, False, "below its threshold 0.5800"),
    (0.90, True, None, True, "first version"),
    (0.50, False, None, True, "first version, promoted although 0.5000 is below"),
    (float("nan"), False, 0.80, False, "kept as candidate"),
], ids=["better", "worse", "within_tolerance", "below_threshold", "first", "first_below",
        "nan"])
def test_promotion_decision(score: float, passed: bool, production: float | None,
                            promote: bool, words: str) -> None:
    decided, reason, _ = promotion_decision(
        candidate_score=score, candidate_passed=passed,
        production_score_on_same_holdout=production, tolerance=0.005, threshold=0.58)
    assert decided is promote and words in reason


def test_promote_refuses_a_version_failing_its_checksum(
        models_dir: Path, estimators: tuple[Pipeline, Pipeline]) -> None:
    ms = ModelStore(models_dir)
    saved_and_promoted(ms, estimators[0])
    ms.save(result(estimators[1]), run_id="r")
    flip_byte(models_dir / NAME / "v0002.skops")
    before = ms.registry_path.read_bytes()
    with pytest.raises(ChecksumError, match="v0002"):
        ms.promote(NAME, "v0002", reason="better", actor="scheduler")
    with pytest.raises(StoreError, match="already production"):
        ms.promote(NAME, "v0001", reason="again", actor="scheduler")
    with pytest.raises(StoreError, match="actor"):
        ms.promote(NAME, "v0001", reason="x", actor="someone")
    assert ms.registry_path.read_bytes() == before


# ---- rollback --------------------------------------------------------------------------------


def test_rollback_to_previous_and_to_a_named_version(
        models_dir: Path, estimators: tuple[Pipeline, Pipeline]) -> None:
    ms = ModelStore(models_dir)
    saved_and_promoted(ms, estimators[0], estimators[1], estimators[1])
    assert ms.aliases(NAME) == {"production": "v0003", "previous": "v0002"}

    entry = ms.rollback(NAME, actor="api")
    assert (entry["from"], entry["to"], entry["action"], entry["actor"]) == (
        "v0003", "v0002", "rollback", "api")
    assert ms.aliases(NAME) == {"production": "v0002", "previous": "v0003"}

    ms.rollback(NAME, to="v0001", actor="cli", reason="v2 misbehaves on the yard")
    estimator, meta = ms.load(NAME)
    assert meta["version"] == "v0001"
    np.testing.assert_allclose(predict(estimator), predict(estimators[0]))
    assert not np.allclose(predict(estimator), predict(estimators[1]))
    audit = ms.audit(limit=2)
    assert [a["to"] for a in audit] == ["v0001", "v0002"]  # newest first
    assert audit[0]["reason"] == "v2 misbehaves on the yard"
    assert len(ms.audit(None, name=NAME)) == 5
    states = {v["version"]: v["state"] for v in ms.versions(NAME)}
    assert states == {"v0001": "production", "v0002": "previous", "v0003": "candidate"}


def test_refused_rollbacks_change_nothing(models_dir: Path,
                                          estimators: tuple[Pipeline, Pipeline]) -> None:
    ms = ModelStore(models_dir)
    saved_and_promoted(ms, *estimators)
    before = ms.registry_path.read_bytes()
    with pytest.raises(UnknownModelError, match="scenario_analysis"):  # lists the valid names
        ms.rollback("no_such_model", actor="api")
    with pytest.raises(UnknownVersionError, match=r"v0042.*not found"):
        ms.rollback(NAME, to="v0042", actor="api")
    flip_byte(models_dir / NAME / "v0001.skops")
    with pytest.raises(ChecksumError, match="v0001"):
        ms.rollback(NAME, actor="api")
    assert ms.registry_path.read_bytes() == before

    fresh = ModelStore(models_dir.parent / "fresh")
    fresh.save(result(estimators[0]), run_id="r")
    fresh.promote(NAME, "v0001", reason="first", actor="scheduler")
    with pytest.raises(StoreError, match="no previous version"):
        fresh.rollback(NAME, actor="cli")


# ---- retention -------------------------------------------------------------------------------


def test_without_versioning_only_production_is_kept(models_dir: Path,
                                                    estimators: tuple[Pipeline, Pipeline]
                                                    ) -> None:
    ms = ModelStore(models_dir, versioning=False)
    saved_and_promoted(ms, *estimators)
    assert ms.aliases(NAME) == {"production": "v0002", "previous": None}
    assert sorted(p.name for p in (models_dir / NAME).iterdir()) == ["v0002.json",
                                                                     "v0002.skops"]
    candidate = ms.save(result(estimators[0], score=0.1), run_id="weak")["version"]
    assert candidate == "v0003"
    deleted = ms.reject(NAME, candidate)
    assert {p.name for p in deleted} == {"v0003.skops", "v0003.json"}
    assert ms.committed(NAME) == ["v0002"]
    assert ms.save(result(estimators[0]), run_id="next")["version"] == "v0004"  # not reused
    with pytest.raises(StoreError, match="no previous"):
        ms.rollback(NAME, actor="cli")


def test_prune_keeps_production_previous_and_newest_candidates(
        models_dir: Path, estimators: tuple[Pipeline, Pipeline]) -> None:
    ms = ModelStore(models_dir, keep_candidates=2)
    saved_and_promoted(ms, *estimators)  # v0001 previous, v0002 production
    for i in range(5):  # v0003..v0007 candidates
        ms.save(result(estimators[i % 2], score=0.5), run_id=f"c{i}")
    ms.rollback(NAME, to="v0001", actor="cli")  # production v0001, previous v0002
    (models_dir / NAME / ".v0008.skops.abc.tmp").write_bytes(b"crashed write")
    ms.prune(NAME)
    assert ms.committed(NAME) == ["v0001", "v0002", "v0006", "v0007"]
    assert sorted(p.name for p in (models_dir / NAME).iterdir()) == sorted(
        f"v000{n}.{ext}" for n in (1, 2, 6, 7) for ext in ("skops", "json"))
    assert ModelStore(models_dir, keep_candidates=0).prune(NAME)
    assert ms.committed(NAME) == ["v0001", "v0002"]
    assert ms.save(result(estimators[0]), run_id="n")["version"] == "v0008"


# ---- failures to write -----------------------------------------------------------------------


def test_models_dir_that_cannot_be_written_is_a_clear_error(
        tmp_path: Path, estimators: tuple[Pipeline, Pipeline]) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    ms = ModelStore(blocker / "models")
    with pytest.raises(StoreError, match=str(blocker)):
        ms.save(result(estimators[0]), run_id="r")
    with pytest.raises(StoreError, match=str(blocker)):
        ms.check_writable()
    assert blocker.read_text() == "a file where a folder should be"


def test_model_folder_that_cannot_be_written_changes_nothing(
        models_dir: Path, estimators: tuple[Pipeline, Pipeline]) -> None:
    ms = ModelStore(models_dir)
    saved_and_promoted(ms, estimators[0], run="ok")
    other = "decision_support"
    (models_dir / other).write_text("in the way")
    before = {p.name: p.read_bytes() for p in models_dir.rglob("*") if p.is_file()}
    bad = result(estimators[0])
    bad.name = other
    with pytest.raises(StoreError, match=str(models_dir / other)):
        ms.save(bad, run_id="r")
    after = {p.name: p.read_bytes() for p in models_dir.rglob("*") if p.is_file()}
    assert after == before


# ---- formats -------------------------------------------------------------------------------


def log_pipeline() -> Pipeline:
    """A fitted Pipeline holding a type no spec declares (a function of `operator`)."""
    import operator

    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import FunctionTransformer

    X = np.arange(20, dtype=float).reshape(-1, 1)
    return Pipeline([("neg", FunctionTransformer(operator.neg)),
                     ("model", Ridge())]).fit(X, X[:, 0])


def test_every_spec_stores_with_skops(trained: dict) -> None:
    import skops.io

    from backend.ml.registry import formats

    for name, fitted in trained.items():
        fmt, payload = formats.dump(specs.get_spec(name), fitted.estimator)
        assert fmt == "skops", name
        assert set(skops.io.get_untrusted_types(data=payload)) <= formats.trusted_types(
            specs.get_spec(name)), name


def test_a_type_outside_the_allow_list_is_stored_with_joblib_and_refused_in_skops(
        models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    import skops.io

    ms = ModelStore(models_dir)
    with caplog.at_level("WARNING"):
        meta = ms.save(result(log_pipeline()), run_id="odd")
    assert meta["format"] == "joblib" and "_operator.neg" in caplog.text
    assert isinstance(ms.load(NAME, meta["version"])[0], Pipeline)  # signed: it loads

    payload = skops.io.dumps(log_pipeline())  # as if a key holder stored it with skops
    smuggled = ms.import_version(NAME, payload, {"format": "skops"})
    with pytest.raises(StoreError, match="outside the allow-list.*_operator.neg"):
        ms.load(NAME, smuggled["version"])


def test_a_version_copied_over_another_model_or_version_is_refused(
        models_dir: Path, estimators: tuple[Pipeline, Pipeline]) -> None:
    import shutil

    ms = ModelStore(models_dir)
    saved_and_promoted(ms, *estimators)
    folder = models_dir / NAME
    for suffix in (".json", ".skops"):  # v0001's signed files placed as v0002
        shutil.copy(folder / f"v0001{suffix}", folder / f"v0002{suffix}")
    with pytest.raises(ChecksumError, match="signed as scenario_analysis v0001"):
        ms.load(NAME, "v0002")
