"""The pipeline spec: one declarative YAML file per ML use case.

Everything pipeline-specific (column names, feature recipe, model, thresholds) lives in the spec so
that the asset factory, resources and core stay generic. Loading is strict: unknown keys and bad
values fail with a message that names the field, before any asset is built.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

SPEC_DIR = Path(__file__).parent / "pipelines"
_HOLIDAY = re.compile(r"^(\d{4}-)?\d{2}-\d{2}$")


def _real_holiday(value: str) -> bool:
    text = value if len(value) == 10 else f"2000-{value}"  # 2000 is a leap year: 02-29 is real
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _project_relative(value: str, field: str) -> str:
    """A path inside the project: relative, no `..`, so a spec never reads or writes elsewhere."""
    path = PurePosixPath(value.replace("\\", "/"))
    if not value.strip() or path.is_absolute() or ".." in path.parts:
        raise ValueError(
            f"{field} must be a path inside the project (relative, without '..'), got {value!r}"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ColumnContract(_Strict):
    """One column's dtype and value rules; checks map onto pandera `Check`s."""

    dtype: Literal["str", "int", "float", "date"]
    """How the text is parsed: str, int (nullable ints stay integers), float, or date."""
    nullable: bool = False
    """Whether a blank value is allowed; a blank in a non-nullable column quarantines the row."""
    format: str | None = None
    """strftime format of a date column, e.g. `%Y-%m-%d`."""
    pattern: str | None = None
    """Regular expression a str value must match in full (ASCII digits for `\\d`)."""
    ge: float | None = None
    """Minimum allowed value (inclusive)."""
    gt: float | None = None
    """Minimum allowed value (exclusive)."""
    le: float | None = None
    """Maximum allowed value (inclusive)."""
    lt: float | None = None
    """Maximum allowed value (exclusive)."""
    isin: list[Any] | None = None
    """The only allowed values."""

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern {value!r} is not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _rules_fit_the_dtype(self) -> ColumnContract:
        from datetime import datetime

        numeric_rules = [r for r in ("ge", "gt", "le", "lt") if getattr(self, r) is not None]
        if numeric_rules and self.dtype not in ("int", "float"):
            raise ValueError(f"{numeric_rules} apply to int and float columns, not {self.dtype}")
        if self.pattern is not None and self.dtype != "str":
            raise ValueError(f"pattern applies to str columns, not {self.dtype}")
        if self.format is not None:
            if self.dtype != "date":
                raise ValueError(f"format applies to date columns, not {self.dtype}")
            sample = date(2024, 12, 31)
            try:
                parsed = datetime.strptime(sample.strftime(self.format), self.format).date()
            except ValueError:
                parsed = None
            if parsed != sample:
                raise ValueError(f"format {self.format!r} does not read back a full date")
        return self


class ContractSpec(_Strict):
    columns: dict[str, ColumnContract]
    """Every column of the landing files, by name, with its `dtype` and rules."""
    unique: list[str] = Field(default_factory=list)
    """Columns whose combination must be unique in a batch; later duplicates are quarantined."""
    max_quarantine_fraction: float = Field(0.05, ge=0.0, le=1.0)
    """A batch with a larger share of bad rows is rejected whole."""

    @model_validator(mode="after")
    def _unique_columns_exist(self) -> ContractSpec:
        missing = [c for c in self.unique if c not in self.columns]
        if missing:
            raise ValueError(f"contract.unique names unknown columns: {missing}")
        return self


class LandingSpec(_Strict):
    """Where the daily `YYYY-MM-DD.csv` files arrive, and the first day they cover."""

    directory: str = Field(
        description="Folder of daily landing CSVs, relative to the project root."
    )
    start_date: date = Field(description="The first daily partition (YYYY-MM-DD).")
    generator: Literal["retail_sales", "customer_churn"] | None = Field(
        None, description="Synthetic data generator for `ml-platform generate` (demo data only)."
    )

    @field_validator("directory")
    @classmethod
    def _inside_project(cls, value: str) -> str:
        return _project_relative(value, "landing.directory")


class FeatureSpec(_Strict):
    lags: list[int] = Field(default_factory=list)
    """Target k days before the predicted day, for each k (regression; needs numeric targets)."""
    rolling_means: list[int] = Field(default_factory=list)
    """Mean target over the last w days up to the feature day, for each w."""
    calendar: list[
        Literal["day_of_week", "day_of_month", "month", "day_of_year", "is_weekend", "is_holiday"]
    ] = Field(default_factory=list)
    """Calendar facts about the predicted day (known in advance)."""
    passthrough: list[str] = Field(
        default_factory=list, description="Numeric columns of the feature day used as they are."
    )
    categorical: list[str] = Field(
        default_factory=list,
        description="String columns used as categories (one-hot inside the saved model; a "
        "category never seen in training is ignored, not rejected).",
    )
    holidays: list[str] = Field(
        default_factory=list,
        description="Holidays for `is_holiday`: `MM-DD` (every year) or `YYYY-MM-DD` (one day).",
    )

    @field_validator("holidays")
    @classmethod
    def _holiday_format(cls, values: list[str]) -> list[str]:
        bad = [v for v in values if not _HOLIDAY.match(v) or not _real_holiday(v)]
        if bad:
            raise ValueError(f"holidays must be MM-DD or YYYY-MM-DD dates, got {bad}")
        return values

    @field_validator("lags", "rolling_means")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError("lags and rolling windows must be >= 1 day")
        return sorted(set(values))


class ModelSpec(_Strict):
    estimator: str = Field(
        description="A scikit-learn estimator class path, e.g. "
        "`sklearn.ensemble.HistGradientBoostingRegressor`; it must fit the pipeline's task."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Estimator arguments.")
    params_file: str | None = Field(
        None,
        description="A YAML file (relative to the project root, e.g. `params.yaml`) whose "
        "`<pipeline name>.model` section is merged under `params` (DVC tracks it).",
    )
    training_window_days: int = Field(365, ge=7)
    """Labelled days used for training, before the holdout."""
    holdout_days: int = Field(28, ge=1)
    """The newest labelled days, kept out of training; promotion compares models on them."""
    skops_trusted_types: list[str] = Field(
        default_factory=list,
        description="Extra types skops may load besides its defaults (the saved model is never "
        "pickled), e.g. HistGradientBoosting's `...predictor.TreePredictor`.",
    )
    prediction_min: float | None = Field(
        None, description="Regression: predictions are clipped at this floor (e.g. 0 for counts)."
    )
    prediction_max: float | None = Field(None, description="Regression: clip ceiling.")
    decision_threshold: float = Field(
        0.5, gt=0, lt=1, description="Classification: probability at or above which the class is 1."
    )
    positive_class: str | int | None = Field(
        None,
        description="Classification: the target value that counts as 1 when the target is not "
        "already 0/1 (e.g. `yes` for a yes/no column declared with `isin: [no, yes]`).",
    )

    @field_validator("estimator")
    @classmethod
    def _sklearn_only(cls, value: str) -> str:
        if not re.fullmatch(r"sklearn(\.[A-Za-z_][A-Za-z0-9_]*)+", value):
            raise ValueError(
                f"must be a scikit-learn class path such as "
                f"sklearn.ensemble.HistGradientBoostingRegressor, got {value!r}"
            )
        return value

    @field_validator("params_file")
    @classmethod
    def _params_inside_project(cls, value: str | None) -> str | None:
        return None if value is None else _project_relative(value, "model.params_file")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ModelSpec:
        low, high = self.prediction_min, self.prediction_max
        if low is not None and high is not None and low >= high:
            raise ValueError(f"prediction_min {low} must be below prediction_max {high}")
        return self


class PromotionSpec(_Strict):
    test: Literal["wilcoxon", "bootstrap"] = "wilcoxon"
    """One-sided paired test on per-row losses (absolute error or log loss)."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """Significance level: the p-value must be below it, against the baseline and the champion."""
    min_relative_improvement: float = Field(0.01, ge=0, lt=1)
    """The challenger's mean loss must also be this much lower (0.01 = 1 %)."""
    baseline_seasonal_period_days: int = Field(7, ge=1)
    """Regression: the seasonal-naive baseline is this lag (must be in features.lags)."""


class CanarySpec(_Strict):
    """Flagger-style analysis: step weights, per-metric limits and a failure threshold.

    Turned into the core's `CanaryPolicy` in one place (`ml_platform.release.policy_for`) and
    written to the registry when a release starts: the server and the sensor read it from there.
    """

    step_weights: list[int] = [5, 25, 50, 100]
    """Percent of requests for the canary at each step; the last is 100."""
    interval_seconds: int = Field(60, ge=1)
    """Seconds between canary analyses."""
    failure_threshold: int = Field(2, ge=1)
    """Failed analyses before the canary is rolled back."""
    max_inconclusive: int = Field(10, ge=1)
    """Analyses without enough canary traffic before rollback."""
    min_requests: int = Field(20, ge=1)
    """Canary requests an analysis needs to be conclusive."""
    max_error_rate: float = Field(0.01, ge=0, le=1)
    """Highest canary error rate (0.01 = 1 %)."""
    max_p99_latency_ms: float = Field(100.0, gt=0)
    """Highest canary p99 latency."""
    max_prediction_shift: float = Field(0.75, gt=0)
    """Cap on the prediction shift: mean |canary - champion| on the same requests over the
    champion's mean absolute deviation (constant model ~1, shuffled ~1.4, identical 0)."""
    shift_tolerance: float = Field(2.0, gt=0)
    """Shift limit = this × the two models' shift on the holdout at promotion (floor 0.25, at
    most max_prediction_shift): a better, different model is not punished for differing."""
    min_predictions: int = Field(50, ge=1)
    """Canary predictions paired with the champion's needed before the shift counts."""
    max_mae_ratio: float = Field(1.1, gt=0)
    """Highest online loss ratio canary / champion on the same requests once labels arrive."""
    min_labelled: int = Field(20, ge=1)
    """Labelled paired predictions needed for the online loss check."""
    wait_for_labels: bool = False
    """Hold the step before 100 % until the online loss check passes (labels have arrived)."""
    bake_seconds: int = Field(0, ge=0)
    """Least time of passing analyses at the step before 100 %."""
    affinity: Literal["request", "entity", "auto"] = "auto"
    """request: exactly the weight's share of requests, an entity may see both models; entity:
    sticky by key hash, share quantised by the number of entities; auto: per request until
    min_sticky_entities distinct entities were seen, then sticky."""
    min_sticky_entities: int = Field(5000, ge=1)
    """Distinct entities before auto affinity turns sticky (5 % over 5,000: ±0.3 pp)."""

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
    """direct: a promoted model becomes champion; canary: it is ramped up by the canary sensor."""
    max_batch_entities: int = Field(1000, ge=1, le=100_000)
    """Most entities one /predict request may ask for (more: 413)."""
    canary: CanarySpec = CanarySpec()
    """Canary analysis settings (mode: canary)."""


class DriftSpec(_Strict):
    window_days: int = Field(7, ge=1)
    """Days of recent features compared with the champion's reference."""
    psi_threshold: float = 0.2
    """A feature with a larger PSI has drifted."""
    wasserstein_threshold: float = 0.1
    """A numeric feature with a larger normalised Wasserstein distance has drifted."""
    js_threshold: float = 0.1
    """A categorical feature with a larger Jensen-Shannon distance has drifted."""
    drift_share: float = Field(0.5, gt=0, le=1)
    """Dataset drift when at least this share of features drifted."""
    concept_drift_tolerance: float = Field(1.25, gt=1)
    """Concept drift when the champion's loss on new labels over its holdout loss exceeds this."""
    cooldown_hours: float = Field(24, ge=0)
    """The drift sensor requests at most one retrain per this many hours."""


class AutomationSpec(_Strict):
    landing_sensor_interval_seconds: int = Field(30, ge=1)
    """How often the landing sensor looks for new files."""
    drift_sensor_interval_seconds: int = Field(60, ge=1)
    """How often the drift sensor reads new drift reports."""
    retrain_cron: str = "0 3 * * 1"
    """Cron schedule of the periodic retrain."""
    retrain_schedule_enabled: bool = False
    """Whether the retrain schedule starts switched on."""


class PipelineSpec(_Strict):
    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,47}$",
        description="Unique name: asset key prefix, registered model, job and state names.",
    )
    description: str = ""
    """One line for people: what is predicted, for whom."""
    task: Literal["regression", "classification"] = Field(
        "regression",
        description="regression: predict a number. classification: predict whether a 0/1 target "
        "is 1 (probability and class).",
    )
    landing: LandingSpec
    """Where the daily files arrive."""
    entity_keys: list[str]
    """Columns that identify one entity (one row per entity and day)."""
    timestamp: str
    """The date column (dtype date); one landing file per day."""
    target: str
    """The column to predict, `horizon_days` after the feature day."""
    horizon_days: int = Field(1, ge=1)
    """How many days ahead the target is predicted."""
    contract: ContractSpec
    """The data contract every landing file must meet."""
    features: FeatureSpec
    """The feature recipe, shared by batch and online features."""
    model: ModelSpec
    """Estimator, its parameters and the training window."""
    promotion: PromotionSpec = PromotionSpec()
    """When a challenger replaces the champion."""
    deployment: DeploymentSpec = DeploymentSpec()
    """How a promoted model is served."""
    drift: DriftSpec = DriftSpec()
    """Data and concept drift thresholds."""
    automation: AutomationSpec = AutomationSpec()
    """Sensors and schedules."""

    @model_validator(mode="after")
    def _columns_fit_the_recipe(self) -> PipelineSpec:
        from ml_platform.spec_checks import check_columns

        check_columns(self)
        return self

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"

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
            *self.features.categorical,
        ]

    @property
    def baseline_column(self) -> str | None:
        """Feature column that holds the seasonal-naive forecast (regression only; a classifier
        is compared with the training base rate)."""
        if self.is_classifier:
            return None
        return f"{self.target}_lag_{self.promotion.baseline_seasonal_period_days}"

    @property
    def loss_name(self) -> str:
        """The per-row loss that promotion, concept drift and the canary compare."""
        return "log_loss" if self.is_classifier else "mae"

    def fingerprint(self) -> str:
        """Stable hash of the resolved spec, recorded on every model version."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class SpecError(ValueError):
    """A spec file that cannot be loaded; the message names the file and the field."""


def _field_errors(path: Path, exc: ValidationError) -> str:
    """One line per problem, `field.path: message`, instead of pydantic's three-line blocks."""
    lines = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "spec"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field" + _did_you_mean_field(error["loc"])
        lines.append(f"  {where}: {message}")
    return f"invalid pipeline spec {path}:\n" + "\n".join(lines)


def _did_you_mean_field(loc: tuple) -> str:
    from ml_platform.spec_checks import did_you_mean

    model: type[BaseModel] = PipelineSpec
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    return did_you_mean(str(loc[-1]), list(model.model_fields))


def load_spec(path: Path, root: Path | None = None) -> PipelineSpec:
    """Load one spec and check everything a run would need (estimator, columns, params), so no
    spec mistake reaches a run. `model.params` are merged from its params file (DVC's params)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read pipeline spec {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"pipeline spec {path} must be a YAML mapping of fields")
    model = raw.get("model")
    params_file = model.get("params_file") if isinstance(model, dict) else None
    if isinstance(params_file, str) and params_file:
        try:
            _project_relative(params_file, "model.params_file")
        except ValueError as exc:
            raise SpecError(f"invalid pipeline spec {path}:\n  {exc}") from None
        params = _read_params(root or Path.cwd(), params_file, str(raw.get("name", "")), path)
        model["params"] = {**params, **(model.get("params") or {})}
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_field_errors(path, exc)) from None
    from ml_platform.spec_checks import SpecCheckError, check_model

    if path.suffix == ".yaml" and path.stem != spec.name:
        raise SpecError(
            f"invalid pipeline spec {path}:\n  name: {spec.name!r} must match the file name "
            f"({path.stem!r}), so a pipeline is found by its name"
        )
    try:
        check_model(spec)
    except SpecCheckError as exc:
        raise SpecError(f"invalid pipeline spec {path}:\n  {exc}") from None
    return spec


def _read_params(root: Path, params_file: str, pipeline: str, spec_path: Path) -> dict[str, Any]:
    """The `<pipeline>.model` section of the params file; missing file or section is an error."""
    params_path = root / params_file
    if not params_path.is_file():
        packaged = Path(__file__).resolve().parent.parent / params_file
        params_path = packaged if packaged.is_file() else params_path
    try:
        params = yaml.safe_load(params_path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SpecError(
            f"invalid pipeline spec {spec_path}:\n  model.params_file: cannot read {params_path}: "
            f"{exc}"
        ) from None
    section = params.get(pipeline) if isinstance(params, dict) else None
    model = section.get("model") if isinstance(section, dict) else None
    if not isinstance(model, dict):
        raise SpecError(
            f"invalid pipeline spec {spec_path}:\n  model.params_file: {params_path} has no "
            f"`{pipeline}: model:` section (a mapping of estimator arguments); add one or drop "
            "params_file"
        )
    return dict(model)


def load_specs(spec_dir: Path = SPEC_DIR, root: Path | None = None) -> list[PipelineSpec]:
    """Every `*.yaml` spec in the folder, sorted by name; any broken spec is an error."""
    specs, errors = load_specs_isolated(spec_dir, root)
    if errors:
        raise SpecError("\n".join(errors.values()))
    return specs


def load_specs_isolated(
    spec_dir: Path = SPEC_DIR, root: Path | None = None
) -> tuple[list[PipelineSpec], dict[str, str]]:
    """(valid specs, {file name: error}): one team's broken spec never stops the others.

    Two files with the same pipeline name are both refused: which one wins is not a guess to make.
    """
    specs: dict[Path, PipelineSpec] = {}
    errors: dict[str, str] = {}
    for path in sorted(Path(spec_dir).glob("*.yaml")):
        try:
            specs[path] = load_spec(path, root)
        except SpecError as exc:
            errors[path.name] = str(exc)
    by_name: dict[str, list[Path]] = {}
    for path, spec in specs.items():
        by_name.setdefault(spec.name, []).append(path)
    for name, paths in by_name.items():
        if len(paths) > 1:
            for path in paths:
                del specs[path]
                errors[path.name] = (
                    f"invalid pipeline spec {path}:\n  name: {name!r} is also used by "
                    f"{[p.name for p in paths if p != path]}; pipeline names must be unique"
                )
    return sorted(specs.values(), key=lambda s: s.name), errors
