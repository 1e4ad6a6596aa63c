"""Settings of the scheduler, read from the environment (the guide's TRAINING_CONFIG names).

One `Settings` class for the whole service; the HTTP edge reads the same object. Relative
paths resolve against the repository, never the working directory, so `uvicorn` started
from `backend/` and `make run` from the top see the same files. A bad value fails at
start-up with a message naming the variable (pydantic-settings does the naming).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.ml.fleet.specs import ModelSpec, threshold_for

if TYPE_CHECKING:
    from backend.ml.data.labels import LabelDelays

REPO_ROOT = Path(__file__).resolve().parents[2]
ML_DIR = REPO_ROOT / "backend" / "ml"
DEFAULT_DATABASE_FILE = ML_DIR / "logistics.db"


def resolve_path(value: str | Path) -> Path:
    """Resolve a configured path against the repository root."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def resolve_database_url(url: str) -> str:
    """Make a relative SQLite file in a URL relative to the repository root."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        rest = url[len(prefix):]
        if rest and rest != ":memory:" and not rest.startswith("file:"):
            return prefix + str(resolve_path(rest))
    return url


Origin = tuple[str, str, int]  # (scheme, host, port) of a web origin
DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(text: str) -> Origin | None:
    """`https://Ops.example.com` -> ("https", "ops.example.com", 443); None unless `text` is
    an http(s) origin (no path beyond "/", no query, fragment or user)."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if (scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/")
            or parts.query or parts.fragment or "@" in parts.netloc):
        return None
    return scheme, parts.hostname, port or DEFAULT_PORTS[scheme]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=True, extra="ignore")

    DATABASE_URL: str = f"sqlite:///{DEFAULT_DATABASE_FILE}"
    DAILY_TRAINING_TIME: str = "02:00"
    TRAINING_TIMEZONE: str = "Asia/Kolkata"
    PERFORMANCE_CHECK_INTERVAL: int = Field(3600, ge=1)
    MIN_ACCURACY_THRESHOLD: float = Field(0.70, ge=0.0, le=1.0)
    MODEL_THRESHOLDS: dict[str, float] = Field(default_factory=dict)
    MAX_RETRAIN_ATTEMPTS: int = Field(3, ge=1, le=10)
    MODEL_VERSIONING: bool = True
    BACKUP_MODELS: bool = True
    BACKUP_RETENTION_DAYS: int = Field(30, ge=0)
    BACKUP_ENCRYPTION_KEY: str | None = None
    # Unset: the key file below, made on first use. Set: at least 32 characters.
    MODEL_SIGNING_KEY: str | None = Field(None, min_length=32)
    MODEL_SIGNING_KEY_FILE: Path = Path("backend/ml/secrets/model_signing.key")
    PROMOTION_TOLERANCE: float = Field(0.005, ge=0.0, le=0.5)
    # The gate's evidence (registry/promotion.py): paired bootstrap resamples of the holdout
    # (0: compare the point scores only), their seed and the interval's confidence; the
    # smallest slice compared, and how much worse than production a slice may be.
    PROMOTION_BOOTSTRAP_RESAMPLES: int = Field(500, ge=0, le=100_000)
    PROMOTION_BOOTSTRAP_SEED: int = Field(0, ge=0)
    PROMOTION_CONFIDENCE: float = Field(0.9, gt=0.0, lt=1.0)
    PROMOTION_MIN_SLICE_ROWS: int = Field(50, ge=1)
    PROMOTION_SLICE_LIMIT: float = Field(0.05, ge=0.0, le=1.0)
    KEEP_CANDIDATES: int = Field(3, ge=0)
    # When too few fresh rows are labelled, the check estimates a model's score on the
    # unlabelled ones (monitoring/estimate.py). An estimate whose 95% interval lies wholly
    # under the threshold is a warning ("estimated below threshold"); `retrain` lets it also
    # start the retrain a degraded check would, `warn` retrains only once labels confirm.
    ESTIMATE_ACTION: Literal["warn", "retrain"] = "warn"
    MODELS_DIR: Path = Path("backend/ml/models")
    LOGS_DIR: Path = Path("backend/ml/logs")
    HISTORY_FILE: Path | None = None
    SCHEDULER_ENABLED: bool = True
    TRAINING_BACKEND: Literal["loky", "dask"] = "loky"
    TRAINING_N_JOBS: int = Field(-1, ge=-1)
    DASK_SCHEDULER_ADDRESS: str | None = None
    ML_API_KEY: str | None = None
    # Where people reach the dashboard; alerts link to it.
    DASHBOARD_URL: str = "http://127.0.0.1:8000/"
    # Alert delivery. No SMTP_HOST / ALERT_WEBHOOK_URL: alerts go to the log and history only.
    ALERT_COOLDOWN_SECONDS: int = Field(3600, ge=0)
    ALERT_DELIVERY_ATTEMPTS: int = Field(3, ge=1, le=10)
    SMTP_HOST: str | None = None
    SMTP_PORT: int = Field(587, ge=1, le=65535)
    SMTP_USER: str | None = None
    SMTP_PASSWORD: str | None = None
    SMTP_STARTTLS: bool = True
    ALERT_EMAIL_FROM: str = "ml-scheduler@localhost"
    ALERT_EMAIL_TO: str = Field("", validate_default=True)  # comma-separated addresses
    ALERT_WEBHOOK_URL: str | None = None
    # A run longer than this raises a training_slow alert.
    TRAINING_SLOW_SECONDS: float = Field(1800.0, gt=0)
    # The HTTP edge: other sites allowed to send mutating requests (comma-separated
    # scheme://host[:port]), the largest request body (10,000 records of the widest model
    # are about 4 MiB of JSON), and the most records one predict request may hold.
    ALLOWED_ORIGINS: str = ""
    MAX_REQUEST_BYTES: int = Field(8 * 2**20, ge=1024, le=256 * 2**20)
    MAX_PREDICT_RECORDS: int = Field(10_000, ge=1, le=100_000)
    # Example models on real data to serve beside the 17 (comma list, e.g. co2_weekly; see
    # fleet/examples.py). The registry reads the variable itself when first imported; this
    # field only refuses an unknown name at start-up.
    EXAMPLE_MODELS: str = ""
    # Shadow scoring (backend/app/shadow.py): predict also offers each production answer to
    # a background thread that scores the model's newest candidate on the same rows and
    # counts how often the two agree. At most SHADOW_QUEUE_SIZE batches wait (more are
    # dropped and counted); a batch scored slower than SHADOW_TIMEOUT_SECONDS is discarded
    # and counted as a timeout. The candidate's scoring costs about what predict does, so
    # SHADOW_SAMPLE_RATE below 1 offers only that share of the answers (chosen at random).
    # Per process: each uvicorn worker reports its own.
    SHADOW_CANDIDATES: bool = False
    SHADOW_QUEUE_SIZE: int = Field(100, ge=1, le=10_000)
    SHADOW_TIMEOUT_SECONDS: float = Field(5.0, gt=0.0, le=600.0)
    SHADOW_SAMPLE_RATE: float = Field(1.0, gt=0.0, le=1.0)
    # When the synthetic plant learns its outcomes (`backend.ml.data.labels`): a shipment
    # this many days after delivery, telemetry's failure flag these days after the reading,
    # a scorecard's next-quarter rating these months after its month, a dispatch decision's
    # payoff these days after it, a day's demand these days after the day's start.
    LABEL_SETTLEMENT_DAYS: float = Field(3.0, ge=0.0, le=365.0)
    LABEL_TELEMETRY_DAYS: float = Field(30.0, ge=0.0, le=365.0)
    LABEL_SCORECARD_MONTHS: int = Field(3, ge=0, le=24)
    LABEL_DISPATCH_DAYS: float = Field(1.0, ge=0.0, le=365.0)
    LABEL_DEMAND_DAYS: float = Field(1.0, ge=0.0, le=365.0)

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("must be a SQLAlchemy URL such as sqlite:///path.db or "
                             "postgresql+psycopg://user@host/db")
        return resolve_database_url(value)

    @field_validator("EXAMPLE_MODELS")
    @classmethod
    def _example_models(cls, value: str) -> str:
        from backend.ml.fleet import examples

        return ",".join(examples.parse(value))

    @field_validator("DAILY_TRAINING_TIME")
    @classmethod
    def _daily_time(cls, value: str) -> str:
        hours, _, minutes = value.partition(":")
        if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2
                and 0 <= int(hours) < 24 and 0 <= int(minutes) < 60):
            raise ValueError("must be HH:MM in 24-hour time, e.g. 02:00")
        return f"{int(hours):02d}:{minutes}"

    @field_validator("TRAINING_TIMEZONE")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as "
                             "Asia/Kolkata)") from exc
        return value

    @field_validator("MODEL_THRESHOLDS", mode="before")
    @classmethod
    def _thresholds(cls, value: object) -> object:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if isinstance(value, dict):
            for name, threshold in value.items():
                if not 0.0 <= float(threshold) <= 1.0:
                    raise ValueError(f"threshold for {name!r} must be within [0, 1]")
        return value

    @field_validator("MODELS_DIR", "LOGS_DIR", "HISTORY_FILE", "MODEL_SIGNING_KEY_FILE")
    @classmethod
    def _paths(cls, value: Path | None) -> Path | None:
        return None if value is None else resolve_path(value)

    @field_validator("SMTP_HOST", "ALERT_WEBHOOK_URL", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `ALERT_WEBHOOK_URL=` in an env file means "no webhook", not a bad URL.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("DASHBOARD_URL", "ALERT_WEBHOOK_URL")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not (urlsplit(value).scheme in ("http", "https")
                                      and urlsplit(value).hostname):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("ALLOWED_ORIGINS")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in (o.strip() for o in value.split(",")):
            if origin and parse_origin(origin) is None:
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], http "
                                 "or https, no path (e.g. https://ops.example.com)")
        return value

    @field_validator("ALERT_EMAIL_FROM", "ALERT_EMAIL_TO")
    @classmethod
    def _addresses(cls, value: str, info: ValidationInfo) -> str:
        many = info.field_name == "ALERT_EMAIL_TO"  # the sender is one address
        for address in (a.strip() for a in (value.split(",") if many else [value])):
            local, at, domain = address.partition("@")
            if (address or not many) and not (at and local and domain and "@" not in domain
                                and not any(c.isspace() for c in address)):
                raise ValueError(f"{address!r} is not an e-mail address (name@host)")
        # A field check, not a model one: a model-level error would echo every input,
        # SMTP_PASSWORD included. SMTP_HOST is declared earlier, so it is in `info.data`.
        if many and info.data.get("SMTP_HOST") and not value.replace(",", "").strip():
            raise ValueError("SMTP_HOST is set but ALERT_EMAIL_TO is empty: set the "
                             "recipients (comma-separated) or unset SMTP_HOST")
        return value

    @model_validator(mode="after")
    def _key_outside_models(self) -> Settings:
        # Whoever can write the models folder (or holds a copy of it) must not hold the key.
        if self.MODEL_SIGNING_KEY_FILE.is_relative_to(self.MODELS_DIR):
            raise ValueError(f"MODEL_SIGNING_KEY_FILE ({self.MODEL_SIGNING_KEY_FILE}) must lie "
                             f"outside MODELS_DIR ({self.MODELS_DIR})")
        return self

    @model_validator(mode="after")
    def _dask_needs_address(self) -> Settings:
        if self.TRAINING_BACKEND == "dask" and not self.DASK_SCHEDULER_ADDRESS:
            raise ValueError("TRAINING_BACKEND=dask needs DASK_SCHEDULER_ADDRESS "
                             "(e.g. tcp://127.0.0.1:8786)")
        return self

    @property
    def history_file(self) -> Path:
        return self.HISTORY_FILE or self.LOGS_DIR / "training_history.json"

    def as_environment(self) -> dict[str, str]:
        """These settings as environment variables, for a child process to read back."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, bool):
                env[name] = "true" if value else "false"
            elif isinstance(value, dict):
                env[name] = json.dumps(value)
            else:
                env[name] = str(value)
        return env

    def allowed_origins(self) -> frozenset[Origin]:
        """ALLOWED_ORIGINS parsed (scheme, host, port)."""
        return frozenset(found for o in self.ALLOWED_ORIGINS.split(",")
                         if (found := parse_origin(o.strip())) is not None)

    def alert_recipients(self) -> list[str]:
        return [a.strip() for a in self.ALERT_EMAIL_TO.split(",") if a.strip()]

    def threshold_overrides(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.MODEL_THRESHOLDS.items()}

    def label_delays(self) -> LabelDelays:
        from backend.ml.data.labels import LabelDelays  # pandas: not for read-only commands

        return LabelDelays(settlement_days=self.LABEL_SETTLEMENT_DAYS,
                           demand_days=self.LABEL_DEMAND_DAYS,
                           telemetry_days=self.LABEL_TELEMETRY_DAYS,
                           scorecard_months=self.LABEL_SCORECARD_MONTHS,
                           dispatch_days=self.LABEL_DISPATCH_DAYS)

    def threshold_for(self, spec: ModelSpec) -> float:
        """The score below which `spec`'s model counts as failing, as configured here."""
        return threshold_for(spec, self.MIN_ACCURACY_THRESHOLD, self.threshold_overrides())


SECRET_WORDS = ("KEY", "PASSWORD", "SECRET", "TOKEN", "URL")


def describe_invalid(exc: ValidationError) -> str:
    """`invalid configuration: NAME: problem (got 'value'); ...`, never echoing the value of
    a variable that may hold a secret (keys, passwords, URLs with credentials)."""
    return "invalid configuration: " + "; ".join(_problem(e) for e in exc.errors())


def _problem(error: Any) -> str:
    name = ".".join(map(str, error["loc"])) or "settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    if any(word in name for word in SECRET_WORDS):
        return f"{name}: {message}"
    return f"{name}: {message} (got {error.get('input')!r})"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
