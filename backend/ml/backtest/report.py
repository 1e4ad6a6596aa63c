"""Where a backtest's results go and how they read: `backtest.json` (the whole document)
and `backtest.svg` (the chart) in one folder, by default LOGS_DIR/backtests/<timestamp>/;
the newest such folder is "the latest backtest" the API serves.

Read-only helpers here import no ML library: the API reads the latest without them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backend.ml.fsio import atomic_write_bytes, atomic_write_json, ensure_dir

BACKTESTS = "backtests"
JSON_FILE, SVG_FILE = "backtest.json", "backtest.svg"


def default_out(logs_dir: Path, now: datetime | None = None) -> Path:
    return Path(logs_dir) / BACKTESTS / f"{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}"


def write(document: Mapping[str, Any], out: Path) -> tuple[Path, Path]:
    """Write the document and its chart into `out`; their paths."""
    from backend.ml.backtest.chart import render

    ensure_dir(out)
    atomic_write_json(out / JSON_FILE, document)
    atomic_write_bytes(out / SVG_FILE, render(document).encode("utf-8"))
    return out / JSON_FILE, out / SVG_FILE


def latest_dir(logs_dir: Path) -> Path | None:
    """The newest folder under LOGS_DIR/backtests holding a backtest.json (names are UTC
    timestamps, so the newest sorts last); None when there is none."""
    folder = Path(logs_dir) / BACKTESTS
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.iterdir() if (p / JSON_FILE).is_file())
    return done[-1] if done else None


def read_latest(logs_dir: Path) -> dict[str, Any] | None:
    folder = latest_dir(logs_dir)
    if folder is None:
        return None
    document: dict[str, Any] = json.loads((folder / JSON_FILE).read_text("utf-8"))
    return document


def summary_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row a policy: its summary, or why it did not run."""
    rows = []
    for name, result in document["policies"].items():
        if not result.get("available"):
            rows.append({"policy": name, "available": False, "reason": result.get("reason")})
        else:
            rows.append({"policy": name, "available": True, **result["summary"]})
    return rows


def table(document: Mapping[str, Any]) -> str:
    """The summary as text, for the CLI. "days below" and "estimated" count model-days:
    scored under the threshold, and with only an estimate (too few labelled fresh rows)."""
    rows = summary_rows(document)
    width = max([len("policy"), *(len(str(r["policy"])) for r in rows)])  # names align
    lines = [f"{'policy':<{width}} {'mean live':>9} {'days below':>10} {'estimated':>9} "
             f"{'retrains':>8} {'CPU s':>8}  alerts"]
    for row in rows:
        if not row["available"]:
            lines.append(f"{row['policy']:<{width}} {row['reason']}")
            continue
        mean = "-" if row["mean_live_score"] is None else f"{row['mean_live_score']:.4f}"
        alerts = ", ".join(f"{k} {v}" for k, v in row["alerts"].items()) or "none"
        # model-days with only an estimate (documents written before it count none)
        estimated = row.get("estimated_only_days", 0)
        lines.append(f"{row['policy']:<{width}} {mean:>9} {row['days_below_threshold']:>10} "
                     f"{estimated:>9} {row['retrains']:>8} {row['cpu_seconds']:>8.1f}  "
                     f"{alerts}")
    return "\n".join(lines)
