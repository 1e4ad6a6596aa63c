"""The 17 models: one `ModelSpec` each, the one place a model is declared.

A spec names its table, its feature columns, its target, task, metric, threshold and
minimum samples, and builds its own scikit-learn Pipeline: through its `estimator` factory
when it has one, else HistGradientBoosting (`estimators.boosted_pipeline`). Features are
context columns of the table (see `data.py` roles) or columns that `prepare` derives from
context; the leakage tests hold every spec to that. Adding an 18th model is adding one spec to
`SPECS`; the trainer, store, monitor, API and dashboard read this registry.

Names are the API contract: never rename one.

A spec may also carry its own table (`TableDecl`: columns with types and roles, the time
column, the key columns) instead of naming one of the generated plant's: `schema` registers
it like any other table, `python -m backend.ml ingest` fills it, `init-db` never touches it.
Example models (`examples.py`) join the registry when named in `EXAMPLE_MODELS`, read once
from the environment when this module is imported.

Reading a spec (name, group, metric, threshold) imports neither pandas nor scikit-learn:
the read-only CLI commands and the API's listings need only that. The estimator is built
in `estimators.py`; the table's column types come from `backend.ml.data.schema` when asked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

Task = Literal["regression", "classification", "anomaly"]


# Builds a spec's unfitted Pipeline from the spec and its parameters (the spec's `params`
# with a fit's overrides). The Pipeline's last step is the model; the trainer routes sample
# weights to it only when its fit takes them, and searches `ModelSpec.search_grid` or the
# model family's grid (see `estimators.py`).
EstimatorFactory = Callable[["ModelSpec", Mapping[str, Any]], "Pipeline"]


ColumnType = Literal["float", "integer", "text", "datetime"]
Role = Literal["id", "context", "outcome"]


@dataclass(frozen=True)
class ColumnDecl:
    """One column of a spec's own table; roles as in `backend.ml.data.schema`."""

    name: str
    type: ColumnType
    role: Role
    derived_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableDecl:
    """A table a spec declares itself. `time` is its event-time column (a datetime, never
    empty); `keys` identify a row (default: the time column) and must be unique; every
    other column is in `columns` with its type and role."""

    name: str
    time: str
    columns: tuple[ColumnDecl, ...]
    keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [self.time, *(c.name for c in self.columns)]
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name!r} declares a column twice")
        unknown = [k for k in self.keys if k not in names]
        if unknown:
            raise ValueError(f"table {self.name!r}: key column(s) {', '.join(unknown)} "
                             "are not declared")

    @property
    def key_columns(self) -> tuple[str, ...]:
        return self.keys or (self.time,)


class UnknownModelError(KeyError):
    """A model name that is not one of the specs."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ModelSpec:
    name: str
    group: str
    table: str
    features: tuple[str, ...]
    target: str
    task: Task
    metric: str
    description: str
    threshold: float | None = None  # None: the global MIN_ACCURACY_THRESHOLD
    min_samples: int = 500
    # Derives extra columns (features or target) from a loaded table. Each derived column
    # is declared in `derived` with the table columns it reads; a trailing "@lag" marks a
    # value read from earlier rows only (a lag of the target is not leakage).
    prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    derived: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    # None: HistGradientBoosting (IsolationForest for anomalies). A factory must be picklable
    # (a module-level function): specs travel to the training workers.
    estimator: EstimatorFactory | None = None
    # The parameter sets the "search" retry tries; None: the model family's (estimators.py).
    search_grid: tuple[Mapping[str, Any], ...] | None = None
    # The spec's own table, when it is not one of the generated plant's; its name is `table`.
    table_decl: TableDecl | None = None
    # How far back `prepare` reads earlier rows for one row's features (its longest lag):
    # the check loads that much history before the fresh rows.
    lookback_days: int = 14
    # Feature columns whose values the promotion gate compares one by one (a destination,
    # a mode): a candidate much worse than production on one of them is held.
    slices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.table_decl is not None and self.table_decl.name != self.table:
            raise ValueError(f"{self.name}: table {self.table!r} but declares "
                             f"{self.table_decl.name!r}")
        unknown = [c for c in self.slices if c not in self.features]
        if unknown:
            raise ValueError(f"{self.name}: slice column(s) {', '.join(unknown)} are not "
                             "features")

    @property
    def categorical(self) -> tuple[str, ...]:
        if self.table_decl is not None:
            text = {c.name for c in self.table_decl.columns if c.type == "text"}
        else:
            from backend.ml.data import schema

            text = schema.text_columns(self.table)
        return tuple(f for f in self.features if f in text)

    @property
    def numeric(self) -> tuple[str, ...]:
        return tuple(f for f in self.features if f not in self.categorical)

    def frame(self, table: pd.DataFrame) -> pd.DataFrame:
        """The table with derived columns added, ready for `features` and `target`."""
        return self.prepare(table) if self.prepare is not None else table

    def make_estimator(self, **overrides: Any) -> Pipeline:
        """A fresh, unfitted Pipeline: column encoding, then the model (the last step)."""
        from backend.ml.fleet.estimators import build_pipeline

        return build_pipeline(self, **overrides)


def _calendar(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    when = out["dispatched_at"]
    out["dispatch_hour"] = when.dt.hour
    out["dispatch_dow"] = when.dt.day_of_week
    out["dispatch_month"] = when.dt.month
    return out


CALENDAR = {"dispatch_hour": ("dispatched_at",), "dispatch_dow": ("dispatched_at",),
            "dispatch_month": ("dispatched_at",)}


def _anomaly_features(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["weighbridge_variance_pct"] = (
        (out["weighbridge_tonnes"] - out["tonnage"]) / out["tonnage"] * 100)
    out["tonnes_per_km"] = out["tonnage"] / out["distance_km"]
    return out


def _satisfaction(frame: pd.DataFrame) -> pd.DataFrame:
    out = _calendar(frame)
    rating = out["customer_rating"]
    out["satisfied"] = (rating >= 4).astype(float).where(rating.notna())
    return out


DEMAND_LAGS = (1, 2, 7, 14)


def _demand_lags(frame: pd.DataFrame) -> pd.DataFrame:
    """Yesterday's and earlier orders of the same material and region: the forecast's inputs."""
    out = frame.sort_values(["material", "region", "demand_date"], kind="stable").copy()
    series = out.groupby(["material", "region"], observed=True)["tonnes_ordered"]
    for lag in DEMAND_LAGS:
        out[f"lag_{lag}"] = series.shift(lag)
    out["mean_7"] = series.transform(lambda s: s.shift(1).rolling(7).mean())
    out["day_of_week"] = out["demand_date"].dt.day_of_week
    out["day_of_year"] = out["demand_date"].dt.day_of_year
    out = out.dropna(subset=["lag_14"])
    return out.sort_values("demand_date", kind="stable").reset_index(drop=True)


SHIPMENT_CONTEXT = ("loading_point", "shift", "destination", "route", "distance_km", "mode",
                    "vehicle_type", "material", "tonnage", "priority",
                    "transporter_on_time_rate", "weather", "rainfall_mm", "traffic",
                    "is_festival", "is_monsoon", "planned_transit_hours")
DISPATCH_CONTEXT = ("yard", "shift", "rakes_available", "trucks_available", "demand_surge",
                    "yard_closure", "weather_alert", "stock_level_pct", "pending_orders")

_SPEC_LIST = [
    ModelSpec("delay_prediction", "prediction", "shipments",
              SHIPMENT_CONTEXT + ("dispatch_hour", "dispatch_dow"), "delay_hours",
              "regression", "r2", "Hours a shipment arrives after its planned transit time.",
              threshold=0.75, prepare=_calendar, derived=CALENDAR,
              slices=("destination", "mode")),
    ModelSpec("cost_prediction", "prediction", "shipments",
              ("distance_km", "mode", "vehicle_type", "material", "tonnage", "priority",
               "fuel_price", "destination", "route"), "total_cost", "regression", "r2",
              "Total cost of a dispatch in INR.", threshold=0.75,
              slices=("destination", "mode")),
    ModelSpec("demand_forecasting", "prediction", "daily_demand",
              ("material", "region", "is_festival", "is_monsoon", "price_index",
               "lag_1", "lag_2", "lag_7", "lag_14", "mean_7", "day_of_week", "day_of_year"),
              "tonnes_ordered", "regression", "one_minus_wape",
              "Tonnes ordered tomorrow per material and region, from the days before.",
              threshold=0.75, prepare=_demand_lags,
              derived={**{f"lag_{k}": ("tonnes_ordered@lag",) for k in DEMAND_LAGS},
                       "mean_7": ("tonnes_ordered@lag",), "day_of_week": ("demand_date",),
                       "day_of_year": ("demand_date",)}),
    ModelSpec("quality_prediction", "prediction", "shipments",
              ("material", "vehicle_type", "mode", "distance_km", "rainfall_mm", "weather",
               "transporter_on_time_rate", "is_festival", "route", "destination"),
              "delivery_condition", "classification", "balanced_accuracy",
              "Condition on delivery: good, minor or major damage.", threshold=0.75,
              slices=("material", "mode")),
    ModelSpec("fuel_consumption", "prediction", "shipments",
              ("distance_km", "tonnage", "mode", "vehicle_type", "traffic", "rainfall_mm",
               "weather", "route"), "fuel_litres", "regression", "r2",
              "Diesel litres a dispatch burns.", threshold=0.75),
    ModelSpec("route_optimization", "optimization", "shipments",
              ("destination", "mode", "weather", "rainfall_mm", "traffic", "is_festival",
               "is_monsoon", "shift", "priority", "dispatch_hour"), "best_route",
              "classification", "accuracy",
              "The route that proves fastest for the destination and conditions.",
              prepare=_calendar, derived=CALENDAR),
    ModelSpec("cost_optimization", "optimization", "shipments",
              ("distance_km", "destination", "material", "fuel_price", "priority"),
              "cheapest_option", "classification", "accuracy",
              "The cheapest mode and vehicle for the consignment."),
    ModelSpec("time_optimization", "optimization", "shipments",
              ("material", "mode", "tonnage", "is_festival", "priority", "dispatch_dow"),
              "fastest_slot", "classification", "accuracy",
              "The loading point and shift that load the consignment fastest.",
              prepare=_calendar, derived=CALENDAR),
    ModelSpec("vehicle_allocation", "optimization", "shipments",
              ("material", "mode", "tonnage", "destination", "distance_km", "priority"),
              "vehicle_type", "classification", "accuracy",
              "The wagon or truck type planners assign to the consignment.",
              slices=("material",)),
    ModelSpec("material_recommendation", "optimization", "shipments",
              ("customer", "customer_segment", "destination", "priority", "dispatch_month"),
              "material", "classification", "accuracy",
              "The product a customer's next order is for.",
              prepare=_calendar, derived=CALENDAR),
    ModelSpec("risk_assessment", "risk_decision", "shipments",
              SHIPMENT_CONTEXT + ("dispatch_hour",), "risk_level", "classification",
              "balanced_accuracy", "Risk level of a dispatch: low, medium or high.",
              threshold=0.62, prepare=_calendar, derived=CALENDAR),
    ModelSpec("decision_support", "risk_decision", "dispatch_decisions", DISPATCH_CONTEXT,
              "best_action", "classification", "accuracy",
              "The dispatch action that proves best for the shift's situation.",
              threshold=0.62),
    ModelSpec("anomaly_detection", "risk_decision", "shipments",
              ("weighbridge_variance_pct", "tonnes_per_km", "tonnage", "distance_km",
               "planned_transit_hours", "rainfall_mm"), "incident", "anomaly", "roc_auc",
              "Unusual dispatches (unsupervised); scored against labelled incidents.",
              threshold=0.62, prepare=_anomaly_features,
              derived={"weighbridge_variance_pct": ("weighbridge_tonnes", "tonnage"),
                       "tonnes_per_km": ("tonnage", "distance_km")}),
    ModelSpec("supplier_performance", "risk_decision", "supplier_scorecards",
              ("fleet_size", "shipments_handled", "on_time_rate", "damage_rate",
               "price_deviation", "disputes"), "next_quarter_rating", "classification",
              "accuracy", "A transporter's rating next quarter: A, B or C.",
              threshold=0.62, min_samples=150),
    ModelSpec("scenario_analysis", "advanced", "dispatch_decisions",
              DISPATCH_CONTEXT + ("action_taken",), "throughput_tonnes", "regression", "r2",
              "Tonnes a yard moves in a shift under a given situation and action.",
              threshold=0.58),
    ModelSpec("predictive_maintenance", "advanced", "equipment_telemetry",
              ("equipment_type", "age_years", "hours_since_service", "vibration_mm_s",
               "temperature_c", "oil_quality", "load_pct"), "failure_within_30d",
              "classification", "balanced_accuracy",
              "Whether a locomotive, wagon, crane or conveyor fails within 30 days.",
              threshold=0.58, slices=("equipment_type",)),
    ModelSpec("customer_satisfaction", "advanced", "shipments",
              ("customer_segment", "priority", "transporter_on_time_rate", "distance_km",
               "mode", "route", "weather", "rainfall_mm", "traffic", "is_festival",
               "material", "vehicle_type", "shift", "loading_point", "destination"),
              "satisfied", "classification", "accuracy",
              "Whether the customer rates the delivery 4 or 5 out of 5.",
              threshold=0.60, prepare=_satisfaction,
              derived={**CALENDAR, "satisfied": ("customer_rating",)}),
]



def _examples() -> list[ModelSpec]:
    # Imported here: `examples` builds its specs from this module's classes.
    from backend.ml.fleet import examples

    return examples.enabled(os.environ.get("EXAMPLE_MODELS", ""))


_SPEC_LIST += _examples()
SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPEC_LIST}
MODEL_NAMES: list[str] = sorted(SPECS)
# The groups, in the order the specs first name them: a spec with a new group adds it.
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(spec.group for spec in _SPEC_LIST))


def get_spec(name: str) -> ModelSpec:
    """The spec called `name`; the error lists every valid name."""
    try:
        return SPECS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; models are "
                                f"{', '.join(MODEL_NAMES)}") from None


def parse_names(names: str | list[str] | None) -> list[str]:
    """Validate a comma list (or list) of model names; None or empty means all."""
    if names is None:
        return list(SPECS)
    items = names.split(",") if isinstance(names, str) else names
    wanted = [n.strip() for n in items if n.strip()]
    if not wanted:
        return list(SPECS)
    unknown = [n for n in wanted if n not in SPECS]
    if unknown:
        raise UnknownModelError(f"unknown model{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(map(repr, unknown))}; models are "
                                f"{', '.join(MODEL_NAMES)}")
    return list(dict.fromkeys(wanted))


def threshold_for(spec: ModelSpec, global_threshold: float,
                  overrides: Mapping[str, float] | None = None) -> float:
    """Per-model override from config, else the spec's own, else the global threshold."""
    if overrides and spec.name in overrides:
        return float(overrides[spec.name])
    return spec.threshold if spec.threshold is not None else global_threshold
