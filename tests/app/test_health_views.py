"""One health vocabulary: after each scripted step, the API's `state`, `/metrics` and the
CLI's `models` name the same state for the model (the browser's badge is checked in
tests/e2e/test_health_badges.py)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys

from backend.ml.config import REPO_ROOT
from tests.app.conftest import ClientFactory, app_settings, ok
from tests.health_steps import STEPS, THRESHOLDS, cli_env

STATE_LINE = re.compile(r'^ml_model_state\{group="\w+",model="(\w+)",state="(\w+)"\} 1\.0$',
                        re.M)


def test_every_view_names_the_same_state_after_each_step(make_client: ClientFactory) -> None:
    client = make_client(MODEL_THRESHOLDS=json.dumps(THRESHOLDS))
    settings = app_settings(client)
    seen = []
    for step in STEPS:
        with contextlib.ExitStack() as stack:
            step.apply(settings, stack)
            api = {m["name"]: m for m in ok(client.get("/ml/models"))["models"]}
            metrics = dict(STATE_LINE.findall(client.get("/metrics").text))
            degraded = re.search(rf'^ml_model_degraded\{{group="\w+",model="{step.model}"\}} '
                                 r'(\S+)$', client.get("/metrics").text, re.M)
            cli = subprocess.run([sys.executable, "-m", "backend.ml", "models", "--json"],
                                 env=cli_env(settings), cwd=REPO_ROOT, capture_output=True,
                                 text=True, timeout=120)
            assert cli.returncode == 0, cli.stderr
            rows = {r["model"]: r for r in json.loads(cli.stdout)}
        views = (api[step.model]["state"], metrics[step.model], rows[step.model]["state"])
        seen.append((step.name, views))
        assert views == (step.expected,) * 3, (step.name, views, api[step.model])
        assert degraded is not None
        assert float(degraded.group(1)) == float(step.expected in (
            "degraded", "retraining", "cooling_down")), step.name
    assert len(seen) == len(STEPS)
