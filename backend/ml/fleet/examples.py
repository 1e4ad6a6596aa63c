"""Example models on real, public data, each with its own table; off unless named.

`EXAMPLE_MODELS=co2_weekly` (comma list) adds them to the registry of `specs.py` when it is
imported, so the trainer, store, check, API and dashboard serve them beside the 17. Their
tables are declared here, not generated: `python -m backend.ml ingest TABLE FILE` fills
them, and `init-db --force` never touches them.

- `co2_weekly`: weekly mean CO2 at Mauna Loa (ppm), March 1958 to December 2001, as
  shipped inside the statsmodels wheel (`statsmodels.datasets.co2`; 2,284 weeks, 59 of
  them without a measurement). A trend plus a yearly cycle: next week's value from the
  last two weeks and the same week a year before, with a linear model, which carries the
  trend past every value it was trained on (trees cannot).

This module imports `specs` inside its functions: `specs` imports it while being built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from backend.ml.fleet.specs import ModelSpec

CO2_LAGS = (1, 2, 52)


def co2_features(frame: pd.DataFrame) -> pd.DataFrame:
    """The lags (by date: a week with no measurement gives no lag, never the wrong week)
    and the week's place in the year; rows lacking a lag are dropped."""
    import numpy as np
    import pandas as pd

    out = frame.sort_values("week_ending", kind="stable").reset_index(drop=True)
    series = out.set_index("week_ending")["co2_ppm"]
    for lag in CO2_LAGS:
        out[f"lag_{lag}"] = series.reindex(
            out["week_ending"] - pd.Timedelta(weeks=lag)).to_numpy()
    angle = 2 * np.pi * out["week_ending"].dt.day_of_year / 365.25
    out["season_sin"], out["season_cos"] = np.sin(angle), np.cos(angle)
    return out.dropna(subset=[f"lag_{lag}" for lag in CO2_LAGS]).reset_index(drop=True)


def co2_pipeline(spec: ModelSpec, params: Mapping[str, Any]) -> Pipeline:
    """`estimators.linear_pipeline`, imported when a fit needs it, not with the registry."""
    from backend.ml.fleet.estimators import linear_pipeline

    return linear_pipeline(spec, params)


def co2_weekly() -> ModelSpec:
    from backend.ml.fleet.specs import ColumnDecl, ModelSpec, TableDecl

    table = TableDecl("co2_weekly", time="week_ending",
                      columns=(ColumnDecl("co2_ppm", "float", "outcome"),))
    return ModelSpec(
        "co2_weekly", "prediction", "co2_weekly",
        (*(f"lag_{lag}" for lag in CO2_LAGS), "season_sin", "season_cos"), "co2_ppm",
        "regression", "r2",
        "Next week's mean CO2 at Mauna Loa (ppm), from the weeks before (real data).",
        threshold=0.90, min_samples=300, prepare=co2_features,
        derived={**{f"lag_{lag}": ("co2_ppm@lag",) for lag in CO2_LAGS},
                 "season_sin": ("week_ending",), "season_cos": ("week_ending",)},
        estimator=co2_pipeline, table_decl=table, lookback_days=7 * max(CO2_LAGS) + 7)


EXAMPLES = {"co2_weekly": co2_weekly}


def parse(names: str) -> list[str]:
    """The example names of a comma list; an unknown one is refused with the valid names."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in EXAMPLES]
    if unknown:
        raise ValueError(f"unknown example model(s) {', '.join(map(repr, unknown))}; "
                         f"examples are {', '.join(sorted(EXAMPLES))}")
    return list(dict.fromkeys(wanted))


def enabled(names: str) -> list[ModelSpec]:
    """The specs of the examples named in `names`; unknown names are left to the settings'
    check, which refuses them at start-up with the valid names."""
    return [EXAMPLES[n]() for n in dict.fromkeys(n.strip() for n in names.split(","))
            if n in EXAMPLES]
