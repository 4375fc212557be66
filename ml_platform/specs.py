"""The pipeline spec: one declarative YAML file per ML use case.

Everything pipeline-specific (column names, feature recipe, model, thresholds) lives in the spec so
that the asset factory, resources and core stay generic. Loading is strict: unknown keys and bad
values fail with a message that names the field, before any asset is built.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SPEC_DIR = Path(__file__).parent / "pipelines"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnContract(_Strict):
    """One column's dtype and value rules; checks map onto pandera `Check`s."""

    dtype: Literal["str", "int", "float", "date"]
    nullable: bool = False
    format: str | None = None
    pattern: str | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    isin: list[Any] | None = None


class ContractSpec(_Strict):
    columns: dict[str, ColumnContract]
    unique: list[str] = Field(default_factory=list)
    max_quarantine_fraction: float = Field(0.05, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _unique_columns_exist(self) -> ContractSpec:
        missing = [c for c in self.unique if c not in self.columns]
        if missing:
            raise ValueError(f"contract.unique names unknown columns: {missing}")
        return self


class LandingSpec(_Strict):
    directory: str
    start_date: date


class FeatureSpec(_Strict):
    lags: list[int] = Field(default_factory=list)
    rolling_means: list[int] = Field(default_factory=list)
    calendar: list[
        Literal["day_of_week", "day_of_month", "month", "day_of_year", "is_weekend", "is_holiday"]
    ] = Field(default_factory=list)
    passthrough: list[str] = Field(default_factory=list)
    holidays: list[str] = Field(default_factory=list, description="MM-DD dates")

    @field_validator("lags", "rolling_means")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError("lags and rolling windows must be >= 1 day")
        return sorted(set(values))


class ModelSpec(_Strict):
    estimator: str
    params: dict[str, Any] = Field(default_factory=dict)
    params_file: str | None = None
    training_window_days: int = Field(365, ge=7)
    holdout_days: int = Field(28, ge=1)
    skops_trusted_types: list[str] = Field(default_factory=list)

    @field_validator("estimator")
    @classmethod
    def _sklearn_only(cls, value: str) -> str:
        if not value.startswith("sklearn."):
            raise ValueError("model.estimator must be an importable sklearn class path")
        return value


class PromotionSpec(_Strict):
    test: Literal["wilcoxon", "bootstrap"] = "wilcoxon"
    alpha: float = Field(0.05, gt=0, lt=1)
    min_relative_improvement: float = Field(0.01, ge=0, lt=1)
    baseline_seasonal_period_days: int = Field(7, ge=1)


class CanarySpec(_Strict):
    """Flagger-style analysis: step weights, per-metric limits and a failure threshold."""

    step_weights: list[int] = [5, 25, 50, 100]
    interval_seconds: int = Field(60, ge=1)
    failure_threshold: int = Field(2, ge=1)
    max_inconclusive: int = Field(10, ge=1)
    min_requests: int = Field(20, ge=1)
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99_latency_ms: float = Field(100.0, gt=0)
    max_prediction_psi: float = Field(0.2, gt=0)
    min_predictions: int = Field(200, ge=1)  # PSI on fewer predictions is noise, not evidence
    max_mae_ratio: float = Field(1.1, gt=0)
    min_labelled: int = Field(20, ge=1)

    @field_validator("step_weights")
    @classmethod
    def _ramp(cls, weights: list[int]) -> list[int]:
        if not weights or weights != sorted(set(weights)) or weights[0] < 1 or weights[-1] != 100:
            raise ValueError(
                "step_weights must rise strictly from >= 1 to 100, e.g. [5, 25, 50, 100]"
            )
        return weights


class DeploymentSpec(_Strict):
    mode: Literal["direct", "canary"] = "direct"
    max_batch_entities: int = Field(1000, ge=1, le=100_000)
    canary: CanarySpec = CanarySpec()


class DriftSpec(_Strict):
    window_days: int = Field(7, ge=1)
    psi_threshold: float = 0.2
    wasserstein_threshold: float = 0.1
    js_threshold: float = 0.1
    drift_share: float = Field(0.5, gt=0, le=1)
    concept_drift_tolerance: float = Field(1.25, gt=1)
    cooldown_hours: float = Field(24, ge=0)


class AutomationSpec(_Strict):
    landing_sensor_interval_seconds: int = Field(30, ge=1)
    drift_sensor_interval_seconds: int = Field(60, ge=1)
    retrain_cron: str = "0 3 * * 1"
    retrain_schedule_enabled: bool = False


class PipelineSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    landing: LandingSpec
    entity_keys: list[str]
    timestamp: str
    target: str
    horizon_days: int = Field(1, ge=1)
    contract: ContractSpec
    features: FeatureSpec
    model: ModelSpec
    promotion: PromotionSpec = PromotionSpec()
    deployment: DeploymentSpec = DeploymentSpec()
    drift: DriftSpec = DriftSpec()
    automation: AutomationSpec = AutomationSpec()

    @model_validator(mode="after")
    def _columns_are_declared(self) -> PipelineSpec:
        declared = set(self.contract.columns)
        used = [*self.entity_keys, self.timestamp, self.target, *self.features.passthrough]
        unknown = sorted({c for c in used if c not in declared})
        if unknown:
            raise ValueError(f"columns used but not declared in contract.columns: {unknown}")
        if self.contract.columns[self.timestamp].dtype != "date":
            raise ValueError(f"timestamp column {self.timestamp!r} must have dtype 'date'")
        if self.promotion.baseline_seasonal_period_days not in self.features.lags:
            raise ValueError("promotion.baseline_seasonal_period_days must be one of features.lags")
        return self

    @property
    def lookback_days(self) -> int:
        """Days of history a feature row needs, which sizes the partition mapping."""
        lag_history = [lag - self.horizon_days for lag in self.features.lags]
        window_history = [w - 1 for w in self.features.rolling_means]
        return max([0, *lag_history, *window_history])

    @property
    def feature_columns(self) -> list[str]:
        """Model input columns, in a stable order."""
        return [
            *(f"{self.target}_lag_{lag}" for lag in self.features.lags),
            *(f"{self.target}_rolling_mean_{w}" for w in self.features.rolling_means),
            *self.features.calendar,
            *self.features.passthrough,
        ]

    @property
    def baseline_column(self) -> str:
        """Feature column that holds the seasonal-naive forecast."""
        return f"{self.target}_lag_{self.promotion.baseline_seasonal_period_days}"

    def fingerprint(self) -> str:
        """Stable hash of the resolved spec, recorded on every model version."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class SpecError(ValueError):
    """A spec file that cannot be loaded; the message names the file and the field."""


def load_spec(path: Path, root: Path | None = None) -> PipelineSpec:
    """Load one spec, merging `model.params` from its params file (as DVC's params.yaml)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read pipeline spec {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"pipeline spec {path} must be a mapping")
    model = raw.get("model") or {}
    params_file = model.get("params_file")
    if params_file:
        params_path = (root or Path.cwd()) / params_file
        if not params_path.exists():
            params_path = Path(__file__).resolve().parent.parent / params_file
        params = _read_params(params_path, raw.get("name", ""))
        model["params"] = {**params, **(model.get("params") or {})}
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValueError as exc:
        raise SpecError(f"invalid pipeline spec {path}:\n{exc}") from exc
    for column in spec.features.passthrough:
        if spec.contract.columns[column].dtype in ("str", "date"):
            raise SpecError(f"{path}: passthrough feature {column!r} must be numeric")
    return spec


def _read_params(path: Path, pipeline: str) -> dict[str, Any]:
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read params file {path}: {exc}") from exc
    return dict((params.get(pipeline) or {}).get("model") or {})


def load_specs(spec_dir: Path = SPEC_DIR, root: Path | None = None) -> list[PipelineSpec]:
    """Every `*.yaml` spec in the folder, sorted by name; duplicate names are an error."""
    specs = [load_spec(p, root) for p in sorted(spec_dir.glob("*.yaml"))]
    names = [s.name for s in specs]
    if len(names) != len(set(names)):
        raise SpecError(f"duplicate pipeline names in {spec_dir}: {names}")
    return specs
