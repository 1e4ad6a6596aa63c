"""A spare reads production while it waits; the job it is given serves those reads from
memory only while the files still verify as the same version."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.ml.config import Settings
from backend.ml.registry import formats
from backend.ml.registry.store import SignatureError
from backend.ml.runs.launcher import AHEAD, Launcher
from backend.ml.runs.preload import Preload
from backend.ml.runs.services import Services
from backend.ml.training import trainer

NAMES = ["scenario_analysis", "decision_support"]


def test_production_read_ahead_is_served_only_while_it_verifies(
        trained: dict[str, trainer.TrainResult], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(MODELS_DIR=tmp_path / "models", LOGS_DIR=tmp_path / "logs",
                        MODEL_SIGNING_KEY="preload-key-" + "4" * 40)
    writer = Services.from_settings(settings).store
    for name in NAMES:
        meta = writer.save(trained[name], run_id="run-1")
        writer.promote(name, meta["version"], reason="first", actor="cli")
        writer.save(trained[name], run_id="run-2")  # v0002, a candidate

    preload = Preload.start(Services.from_settings(settings, keep_loaded=True))
    assert preload is not None and preload.wait(timeout=120)
    services = preload.finish()
    assert sorted(preload.loaded) == sorted(NAMES)  # those with a production version

    real_load = formats.load
    monkeypatch.setattr(formats, "load", lambda *a: pytest.fail("read again: not kept"))
    estimator, meta = services.store.load("scenario_analysis")
    assert meta["version"] == "v0001" and estimator is not None

    # A promotion in between: the new production is read from its file, not from memory
    writer.promote("scenario_analysis", "v0002", reason="better", actor="cli")
    with pytest.raises(pytest.fail.Exception, match="read again"):
        services.store.load("scenario_analysis")
    monkeypatch.setattr(formats, "load", real_load)
    assert services.store.load("scenario_analysis")[1]["version"] == "v0002"

    # What was read ahead is never trusted for it: a changed file is refused
    meta_path = writer.meta_path("decision_support", "v0001")
    meta_path.write_text(meta_path.read_text().replace('"run-1"', '"run-x"'))
    with pytest.raises(SignatureError):
        services.store.load("decision_support")


def test_only_a_spare_kept_ahead_reads_ahead(tmp_path: Path) -> None:
    settings = Settings(MODELS_DIR=tmp_path / "models", LOGS_DIR=tmp_path / "logs")
    launcher = Launcher(settings, keep_spare=True, first_after=3600)
    try:
        launcher._fill()
        spare = launcher.spare
        assert spare is not None and AHEAD in spare.process.args
    finally:
        launcher.close()
