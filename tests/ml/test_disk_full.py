"""A full or read-only disk under the models and logs, as the CLI meets it: one line on
stderr naming the path, exit code 2, the run on record as failed when the history can
still be written (and the line says when it cannot), and nothing torn: every production
model still verifies and loads, the history parses.

The disks are real: a small tmpfs mounted for the test (root with CAP_SYS_ADMIN; skipped
elsewhere), filled with a file until the kernel says ENOSPC, or remounted read-only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.ml.config import Settings
from backend.ml.fleet import specs
from backend.ml.runs.services import Services
from backend.ml.training import trainer
from tests.ml.test_cli import run_cli

FAST = "scenario_analysis"
ROLLED = "supplier_performance"  # two versions: something to roll back to


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` mounted on `path` for the block; skips where none can be."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs",
                              str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or 'mount failed'}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path, *, leave: int = 0) -> None:
    """Write zeros into `folder/fill` until the file system is full, then give back
    `leave` bytes."""
    target = folder / "fill"
    with open(target, "wb", buffering=0) as handle:
        for chunk in (b"\0" * (1 << 20), b"\0" * 4096):
            with contextlib.suppress(OSError):
                while handle.write(chunk):
                    pass
    with pytest.raises(OSError) as full:
        with open(target, "ab", buffering=0) as handle:
            handle.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    if leave:
        os.truncate(target, target.stat().st_size - leave)


def remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def saved_state(trained: dict[str, trainer.TrainResult], small_db: str,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models and logs with production versions of two models (the session's fits, saved;
    one of them twice) and a history: copied onto each test's disk."""
    root = tmp_path_factory.mktemp("disk-state")
    services = Services.from_settings(settings_for(root, small_db))
    for name in (FAST, ROLLED, ROLLED):
        # Saved without a data fingerprint, as an older release did: a run on the same
        # data then fits and writes anew instead of finding production unchanged.
        fit = dataclasses.replace(trained[name], data_fingerprint=None)
        version = services.store.save(fit, run_id="run-setup")["version"]
        services.store.promote(name, version, reason="set up", actor="cli")
    services.history.append_training({"run_id": "run-setup", "trigger": "manual",
                                      "status": "success", "models": [FAST, ROLLED]})
    return root


def settings_for(root: Path, small_db: str) -> Settings:
    return Settings(DATABASE_URL=small_db, MODELS_DIR=root / "models", LOGS_DIR=root / "logs",
                    TRAINING_N_JOBS=2)


def env_for(root: Path, small_db: str) -> dict[str, str]:
    return {"DATABASE_URL": small_db, "MODELS_DIR": str(root / "models"),
            "LOGS_DIR": str(root / "logs"), "TRAINING_N_JOBS": "2"}


def copy_state(saved: Path, root: Path) -> None:
    for part in ("models", "logs"):
        shutil.copytree(saved / part, root / part, dirs_exist_ok=True)


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def assert_whole(root: Path, small_db: str) -> dict[str, object]:
    """Every production model verifies and loads, the history parses; the history."""
    services = Services.from_settings(settings_for(root, small_db))
    served = 0
    for name in specs.MODEL_NAMES:
        version = services.store.aliases(name)["production"]
        if version is not None:
            _, meta = services.store.load(name, version)
            assert meta["version"] == version
            served += 1
    assert served == 2
    document: dict[str, object] = json.loads(
        (root / "logs" / "training_history.json").read_text())
    return document


def test_a_run_on_a_full_models_disk_is_one_line_and_on_record_as_failed(
        saved_state: Path, small_db: str, tmp_path: Path) -> None:
    root = tmp_path / "state"
    with tmpfs(root / "models", "16m") as models:
        copy_state(saved_state, root)
        fill(models, leave=256 << 10)  # room for a lock's holder, not for a model file
        proc = run_cli("train", "--models", FAST, "--json", env=env_for(root, small_db))
        assert proc.returncode == 2, proc.stderr
        line = one_line(proc.stderr)
        assert str(models / FAST) in line and "No space left on device" in line, line
        assert "is recorded as failed" in line, line
        history = assert_whole(root, small_db)
        [failed] = [t for t in history["trainings"]  # type: ignore[attr-defined]
                    if t["run_id"] != "run-setup"]
        assert failed["status"] == "failed" and "No space left" in failed["errors"][0]
        assert not list(models.rglob(".*.tmp")), "a temporary file was left behind"


def test_a_run_whose_history_cannot_be_written_says_so_in_its_one_line(
        saved_state: Path, small_db: str, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "16m") as disk:
        copy_state(saved_state, disk)
        history = (disk / "logs" / "training_history.json").read_bytes()
        fill(disk)
        proc = run_cli("train", "--models", FAST, "--json", env=env_for(disk, small_db))
        assert proc.returncode == 2, proc.stderr
        line = one_line(proc.stderr)
        assert str(disk / "logs") in line and "No space left on device" in line, line
        assert "could not be put on record" in line, line
        assert_whole(disk, small_db)
        assert (disk / "logs" / "training_history.json").read_bytes() == history


@pytest.mark.parametrize("command", [
    # check --json: without it, the models checked before the write is refused are
    # printed on stderr first, as progress
    ("rollback", ROLLED), ("train", "--models", FAST), ("check", "--json"),
    ("init-db", "--days", "5"),
], ids=lambda command: command[0])
def test_every_command_on_a_read_only_state_is_one_line_naming_the_path(
        saved_state: Path, small_db: str, tmp_path: Path, command: tuple[str, ...]) -> None:
    with tmpfs(tmp_path / "disk", "16m") as disk:
        copy_state(saved_state, disk)
        remount_read_only(disk)
        env = env_for(disk, small_db)
        if command[0] == "init-db":
            env["DATABASE_URL"] = f"sqlite:///{disk / 'new.db'}"
        proc = run_cli(*command, env=env)
        assert proc.returncode == 2, proc.stderr
        line = one_line(proc.stderr)
        assert str(disk) in line and ("Read-only file system" in line
                                      or "unable to open database" in line), line
        assert_whole(disk, small_db)
