"""The latest policy backtest (`python -m backend.ml backtest`): its document and its chart.

`GET /ml/backtest/latest` is backtest.json of the newest folder under LOGS_DIR/backtests,
`GET /ml/backtest/latest.svg` its chart; both 404 with a message naming the command when no
backtest has been written there. `GET /ml/backtest` says whether there is one (its summary,
or null), for the dashboard. Read-only: a backtest takes minutes of CPU, so it is run
from the CLI, never from a request.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from backend.app.deps import SettingsDep
from backend.app.schemas import Envelope, Open, error_responses
from backend.ml.backtest import report

router = APIRouter(prefix="/ml/backtest", tags=["backtest"])
NONE_YET = ("no backtest yet: run `python -m backend.ml backtest` (it writes under "
            "LOGS_DIR/backtests)")
# The chart is a static drawing: nothing in it may run or fetch, even opened on its own.
SVG_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
               "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}


class BacktestResult(Open):
    """backtest.json: the options, each policy's summary and days (see the CLI's help)."""

    days: int
    scenario: str | None = None
    at: int | None = None
    models: list[str]
    policies: dict[str, Any]


class BacktestIndex(Open):
    """Whether a backtest exists, and the summary of the newest: what the dashboard asks
    (a 200 either way, so a page without a backtest logs no failed request)."""

    latest: dict[str, Any] | None = None


@router.get("", response_model=Envelope[BacktestIndex])
def backtest_index(settings: SettingsDep) -> Envelope[BacktestIndex]:
    """The newest backtest's options and one summary row a policy (no days); `latest` is
    null when none has been written."""
    document = report.read_latest(settings.LOGS_DIR)
    if document is None:
        return Envelope(data=BacktestIndex(latest=None))
    brief = {k: v for k, v in document.items() if k != "policies"}
    return Envelope(data=BacktestIndex(latest={**brief, "rows": report.summary_rows(document)}))


@router.get("/latest", response_model=Envelope[BacktestResult],
            responses=error_responses(404))
def latest_backtest(settings: SettingsDep) -> Envelope[BacktestResult]:
    """The newest backtest's document."""
    document = report.read_latest(settings.LOGS_DIR)
    if document is None:
        raise HTTPException(status_code=404, detail=NONE_YET)
    return Envelope(data=BacktestResult.model_validate(document))


@router.get("/latest.svg", response_class=FileResponse, responses={
    200: {"content": {"image/svg+xml": {"schema": {"type": "string"}}},
          "description": "The newest backtest's chart."}, **error_responses(404)})
def latest_backtest_chart(settings: SettingsDep) -> FileResponse:
    """The newest backtest's chart: mean live score a day, by policy."""
    folder = report.latest_dir(settings.LOGS_DIR)
    if folder is None or not (folder / report.SVG_FILE).is_file():
        raise HTTPException(status_code=404, detail=NONE_YET)
    return FileResponse(folder / report.SVG_FILE, media_type="image/svg+xml",
                        headers=SVG_HEADERS)
