"""A check and rollbacks in two real processes at the same time lose no write: every
rollback is in the audit and the registry agrees with it, the check's verdicts and the
other process's monitor entries are all kept, and the history has every entry of both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from backend.ml.config import REPO_ROOT
from backend.ml.data import loading, synthetic
from backend.ml.history import History
from backend.ml.monitoring.state import read_state
from backend.ml.registry.aliases import AliasMove, replay
from backend.ml.registry.store import ModelStore
from tests.app.conftest import fresh_copy

ROLLBACKS = """
import sys
from pathlib import Path
from backend.ml.history import History
from backend.ml.monitoring.state import monitor_file
from backend.ml.registry.store import ModelStore
check_pid, logs, models = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
store, history = ModelStore(models), History(logs / "training_history.json")
state = monitor_file(logs)


def checking() -> bool:  # a finished check stays a zombie until the test reaps it
    try:
        return Path(f"/proc/{check_pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


n = 0
while n < 5 or (checking() and n < 2000):
    store.rollback("supplier_performance", actor="cli", reason=f"probe {n}")
    with state.update() as value:
        value.root[f"probe-{n}"] = value.of("probe")
    history.append_alert({"level": "info", "kind": "probe", "message": f"probe {n}"})
    n += 1
print(n)
"""


def test_a_check_and_rollbacks_at_once_lose_no_write(trained_root: Path, small_db: str,
                                                     tmp_path: Path) -> None:
    root = fresh_copy(trained_root, tmp_path / "state")
    source = loading.sqlite_path(small_db)
    assert source is not None
    shutil.copyfile(source, tmp_path / "logistics.db")
    url = f"sqlite:///{tmp_path / 'logistics.db'}"
    synthetic.simulate(loading.writable_engine(url), days=20)
    models, logs = root / "models", root / "logs"
    audit_before = len(ModelStore(models).audit(None))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DATABASE_URL": url,
           "MODELS_DIR": str(models), "LOGS_DIR": str(logs), "MIN_ACCURACY_THRESHOLD": "0"}
    check = subprocess.Popen([sys.executable, "-m", "backend.ml", "check", "--json"],
                             env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    rollbacks = subprocess.run([sys.executable, "-c", ROLLBACKS, str(check.pid), str(logs),
                                str(models)], env=env, cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=300)
    out, err = check.communicate(timeout=300)
    assert check.returncode == 0, err
    assert rollbacks.returncode == 0, rollbacks.stderr
    n = int(rollbacks.stdout)

    store = ModelStore(models)
    audit = store.audit(None)
    assert len(audit) == audit_before + n
    probes = [m for m in audit if m["reason"].startswith("probe ")]
    assert [m["reason"] for m in reversed(probes)] == [f"probe {i}" for i in range(n)]
    replayed = replay(AliasMove.model_validate(m) for m in reversed(audit))
    assert store.aliases("supplier_performance")["production"] == \
        replayed["supplier_performance"].production

    history = History(logs / "training_history.json")
    entry = history.checks(limit=1)[0]
    assert entry["check_id"] == json.loads(out)["check_id"]
    verdicts = {name for name, v in entry["models"].items() if "live_score" in v}
    assert verdicts, entry
    state = read_state(logs).root
    assert {f"probe-{i}" for i in range(n)} <= set(state)
    assert all(state[name].verdict is not None for name in verdicts)
    assert sorted(a["message"] for a in history.alerts(limit=1000)
                  if a["kind"] == "probe") == sorted(f"probe {i}" for i in range(n))
