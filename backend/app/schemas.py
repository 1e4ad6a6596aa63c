"""Request bodies and response shapes of the HTTP API: what /openapi.json documents.

Every answer is an envelope: `{"status": "success", "data": ...}` or `{"status": "error",
"error": {"code", "message"}}` (the original guide's contract). Records that come from the
ML core (history entries, version metadata, check results) declare the fields a client can
rely on and let any others through (`extra="allow"`), so a new field in the history does
not need an API release to be seen. A model timeline's shapes are beside the one route
that answers with them (`routes/dashboard.py`).
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.ml.history import STATUSES, models_in

T = TypeVar("T")
VERSION_PATTERN = r"^v[0-9]{4,9}$"
# The most records the schema takes; the route holds a request to MAX_PREDICT_RECORDS.
MAX_RECORDS = 100_000
TrainingStatus = Literal["running", "success", "partial", "failed", "interrupted"]
assert set(get_args(TrainingStatus)) == set(STATUSES), "keep in step with the history"


class Open(BaseModel):
    """A record from the ML core: the declared fields plus whatever else it holds."""

    model_config = ConfigDict(extra="allow")


class Envelope(BaseModel, Generic[T]):
    status: Literal["success"] = "success"
    data: T


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    code: int = Field(description="The HTTP status code, repeated.")
    message: str
    run_id: str | None = Field(None, description="409 on trigger: the run holding the lock.")
    details: list[FieldError] | None = Field(None, description="422: every field at fault.")


class ErrorEnvelope(BaseModel):
    status: Literal["error"] = "error"
    error: ErrorBody


ERROR_DESCRIPTIONS = {
    401: "Missing or wrong `Authorization: Bearer <ML_API_KEY>` (only when the key is set).",
    403: "A change sent from another site (`Origin`, `Sec-Fetch-Site`) not in "
         "ALLOWED_ORIGINS.",
    404: "Unknown model, version or run; the message lists what exists.",
    409: "Conflict with the current state: a run is already running, nothing to roll back "
         "to, no production version yet, or a version failing its checksum.",
    413: "The request body is larger than MAX_REQUEST_BYTES.",
    415: "A request body that is not JSON (`Content-Type: application/json`).",
    422: "Invalid input; the message names the field (and lists valid model names).",
    500: "Unexpected error; details are in the server log under the reference given.",
    503: "No version of the model can be served, or the service's state cannot be written "
         "(disk full, read-only or not permitted; the message names the path).",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for error codes a route can answer with."""
    return {code: {"model": ErrorEnvelope, "description": ERROR_DESCRIPTIONS[code]}
            for code in codes}


# ---- training ---------------------------------------------------------------------------


class Stats(Open):
    """The guide's statistics over every run ever recorded, plus breakdowns."""

    total_trainings: int
    successful_trainings: int
    success_rate: float
    total_models_trained: int
    avg_accuracy: float | None = None
    last_training: str | None = None
    by_status: dict[str, int] = Field(default_factory=dict)
    running_trainings: int = 0
    per_model: dict[str, dict[str, Any]] = Field(default_factory=dict)


class TrainerStatus(BaseModel):
    is_training: bool
    last_training_time: str | None
    stats: Stats


class Progress(Open):
    """A running run: `total`, `done`, `in_flight`, `finished` once it has started
    training; only `run_id` and `holder` in its first instants."""

    run_id: str | None = None


class StatusData(BaseModel):
    scheduler_active: bool = Field(description="This process holds the scheduler lease and "
                                               "its thread is alive.")
    scheduler_enabled: bool
    training_time: str
    timezone: str
    trainer_status: TrainerStatus
    next_run: str | None = Field(description="Local time of the next daily run "
                                             "(YYYY-MM-DD HH:MM:SS).")
    next_check: str | None
    last_check: str | None
    lease_holder: str | None = Field(description="Who holds the scheduler lease, e.g. "
                                                 "`pid=123 host=x`.")
    progress: Progress | None
    api_key_required: bool = Field(description="Trigger and rollback need "
                                               "`Authorization: Bearer <ML_API_KEY>`.")
    served_by: int = Field(description="Process id of the worker that answered.")


class TriggerAccepted(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    status: Literal["running"] = "running"


class RunSummary(Open):
    """The guide's result shape of a finished run."""

    status: Literal["success", "partial", "failed"]
    timestamp: str
    duration_seconds: float
    models_trained: int
    successful_models: int
    failed_models: int
    avg_accuracy: float | None
    errors: list[str]
    model_details: dict[str, dict[str, dict[str, Any]]]
    run_id: str
    trigger: str
    promoted: list[str]
    unchanged: list[str] = Field(default_factory=list, description=(
        "Models whose data and parameters are production's: not fitted, no new version."))


class TrainingRecord(Open):
    run_id: str | None = None
    timestamp: str | None = None
    status: str | None = None
    models: list[str] | None = Field(None, description=(
        "The models the run covered, every one for a full run (an older record without "
        "the list: those in its `model_details`)."))
    unchanged: list[str] = Field(default_factory=list, description=(
        "Models not fitted again: their data and parameters are those of their production "
        "version, which stands (no new version, no backup)."))

    @model_validator(mode="before")
    @classmethod
    def _covered(cls, data: Any) -> Any:
        if isinstance(data, dict) and not isinstance(data.get("models"), list):
            named = sorted(models_in({"model_details": data.get("model_details")}))
            data = {**data, "models": named or None}
        return data


class RunDetail(TrainingRecord):
    progress: Progress | None = None


class HistoryLists(BaseModel):
    trainings: list[TrainingRecord]
    model_versions: dict[str, list[dict[str, Any]]]


class Page(BaseModel):
    limit: int
    offset: int
    count: int


class HistoryData(BaseModel):
    history: HistoryLists
    stats: Stats
    page: Page


# ---- models -----------------------------------------------------------------------------


class Aliases(BaseModel):
    production: str | None
    previous: str | None


ESTIMATE_WORDS = ("An estimate, never a score: with too few fresh labelled rows, the "
                  "model's metric estimated on fresh rows whose labels are pending (CBPE for "
                  "classifiers, direct loss estimation for regressors; anomaly detection is "
                  "not estimated). ")


class EstimatedScore(BaseModel):
    """The estimated_* fields, wherever a score is shown beside them."""

    estimated_value: float | None = Field(None, description=ESTIMATE_WORDS + "The value.")
    estimated_low: float | None = Field(None, description="Low end of its 95% interval.")
    estimated_high: float | None = Field(None, description="High end of its 95% interval.")
    estimate_method: Literal["cbpe", "direct_loss_estimation"] | None = None
    estimated_rows: int | None = Field(None, description="Rows with pending labels it is on.")


class LiveCheck(EstimatedScore, Open):
    """One model's entry of the newest performance check that scored or estimated it."""

    check_id: str | None = None
    timestamp: str | None = None
    live_score: float | None = None
    threshold: float | None = None
    samples: int | None = None
    verdict: str | None = None
    drift: dict[str, Any] | None = None
    estimate_note: str | None = Field(None, description="Why no estimate was made (e.g. "
                                                        "anomaly detection is not estimated).")
    realized: list[dict[str, Any]] | None = Field(None, description=(
        "Earlier estimates whose labels arrived in this check: each with `realized_value` "
        "and `estimation_error` (estimated minus realized) beside the estimate."))


ModelState = Literal["no_version", "retraining", "training", "cooling_down", "degraded",
                     "watch", "estimated_below_threshold", "below_threshold", "healthy"]


class ModelSummary(EstimatedScore):
    name: str
    group: str
    task: str
    metric: str
    threshold: float
    production_version: str | None
    score: float | None
    baseline: float | None
    passed: bool | None
    trained_at: str | None
    last_check: LiveCheck | None
    error: str | None = Field(None, description="Why the production metadata is unreadable.")
    state: ModelState = Field(description=(
        "The model's health, first that applies: `no_version` (nothing promoted yet), "
        "`retraining` (a retrain after a degraded check includes it), `training` (a routine "
        "run includes it), `cooling_down` (retrains exhausted; waits for new data or the "
        "next daily run), `degraded` or `watch` (the monitor's verdict on the serving "
        "version: below threshold, or below once by less than the margin), "
        "`estimated_below_threshold` (too few labels; the estimate's whole interval is under "
        "the threshold: a warning until labels confirm it), "
        "`below_threshold` (the serving version's own holdout score is under its "
        "threshold), `healthy`. Defined once, in backend/ml/monitoring/health.py."))
    state_reason: str = Field(description="Why the model is in that state, for people.")


class ModelList(BaseModel):
    models: list[ModelSummary]


class Feature(BaseModel):
    name: str
    kind: Literal["categorical", "numeric"]


class ModelDetail(BaseModel):
    name: str
    group: str
    task: str
    metric: str
    description: str
    threshold: float
    features: list[Feature]
    aliases: Aliases
    production: dict[str, Any] | None = Field(
        description="The production version's metadata, without its feature statistics.")
    last_check: LiveCheck | None
    error: str | None = None


class VersionMeta(Open):
    version: str
    state: Literal["production", "previous", "candidate"]


class VersionList(BaseModel):
    model: str
    aliases: Aliases
    versions: list[VersionMeta]


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, pattern=VERSION_PATTERN,
                                description="Version to serve; default: the previous one.")
    reason: str | None = Field(None, max_length=500)


class AuditEntry(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    at: str
    model: str
    from_: str | None = Field(alias="from")
    to: str
    action: str
    reason: str
    actor: str


class RollbackData(BaseModel):
    model: str
    aliases: Aliases
    audit: AuditEntry


class ProductionAt(BaseModel):
    """The version that served at `at`, and the audit entry of the move that made it
    production (replaying the audit up to `at`)."""

    model: str
    at: str = Field(description="The time asked about, as given (ISO 8601).")
    version: str
    since: str = Field(description="When that version became production.")
    move: AuditEntry


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[dict[str, Any]] = Field(
        min_length=1, max_length=MAX_RECORDS,
        description="Rows of feature values (see GET /ml/models/{name}): categorical features "
                    "as strings, numeric ones as finite numbers; null for a missing value. "
                    "Other keys are ignored. At most MAX_PREDICT_RECORDS (default 10,000).")
    version: str | None = Field(None, pattern=VERSION_PATTERN,
                                description="Default: production (or its verified fallback).")


class PredictData(BaseModel):
    model: str
    version: str
    served_as: str = Field(description="production, previous, fallback or requested.")
    output: Literal["label", "value", "anomaly_score"]
    count: int
    predictions: list[str | int | float | bool | None]


# ---- system -----------------------------------------------------------------------------


class Alert(Open):
    id: str | None = None
    timestamp: str | None = None
    level: str | None = None
    kind: str | None = None
    model: str | None = None
    message: str | None = None


class AlertList(BaseModel):
    alerts: list[Alert]
    page: Page


class Database(BaseModel):
    reachable: bool
    url: str = Field(description="The database URL, password hidden.")
    error: str | None = None


class HealthData(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    database: Database
