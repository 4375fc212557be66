"""Flagger-style canary analysis: scrape → interval deltas → checks → next step of the release.

The serving app exports cumulative Prometheus counters per (pipeline, variant, version). Each
analysis looks at what happened in the last interval only (the difference of two scrapes), so an
early bad minute cannot be diluted by hours of good traffic. Everything here is pure: the sensor
scrapes, keeps `CanaryState` and the previous scrape in its cursor, and moves the aliases.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from itertools import pairwise

import numpy as np
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "ml_platform_requests_total"
ERRORS = "ml_platform_request_errors_total"
LATENCY = "ml_platform_request_latency_seconds"
PREDICTION = "ml_platform_prediction_value"
# fmt: off
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.05, 0.075, 0.1,
                   0.25, 0.5, 1.0, 2.5)
PREDICTION_BUCKETS = (0, 1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000,
                      10000)
# fmt: on
# Registry tags a release writes (the weight tag is `names.CANARY_WEIGHT_TAG`): the server
# and the sensor both read the policy from here, never from the spec they happened to load.
POLICY_TAG = "ml_platform.canary_policy"  # registered model: CanaryPolicy JSON of the release
RELEASE_TAG = "ml_platform.canary_release"  # registered model: "<version>@<ISO start time>"
PAUSED_TAG = "ml_platform.canary_paused"  # registered model: "true" holds the analysis
ROLLED_BACK_TAG = "ml_platform.rolled_back"  # model version: why it was rolled back
CORE_CHECKS = (
    "error_rate",
    "p99_latency_ms",
    "prediction_shift",
)  # must pass for the weight to rise

Buckets = tuple[tuple[float, float], ...]  # (upper bound le, cumulative count), sorted, +inf last


@dataclass(frozen=True)
class CanaryPolicy:
    """Limits and pace of one release; defaults follow Flagger's step analysis.

    Built from the spec's `CanarySpec` in one place (`ml_platform.release.policy_for`) and written
    to the registry when a release starts, so the server and the sensor read the same policy.
    """

    step_weights: tuple[int, ...] = (5, 25, 50, 100)  # percent of requests routed to the canary
    failure_threshold: int = 2  # failed analyses (cumulative over the release) before rollback
    max_inconclusive: int = 10  # consecutive inconclusive analyses before rollback
    min_requests: int = 20  # canary requests in the interval for the interval to be conclusive
    max_error_rate: float = 0.01
    max_p99_latency_ms: float = 100.0
    # Prediction shift: mean |canary - champion| over the same requests, in units of the
    # champion's own mean absolute deviation. A constant model scores about 1, a shuffled one
    # about 1.4, an identical one 0. The limit is `shift_tolerance` times how much the two models
    # differed on the holdout at promotion (`offline_shift`), within [SHIFT_FLOOR, this cap].
    max_prediction_shift: float = 0.75
    shift_tolerance: float = 2.0
    offline_shift: float | None = None
    min_predictions: int = 50  # paired predictions needed before the shift counts
    max_mae_ratio: float = 1.1  # canary online loss / champion's on the same requests
    min_labelled: int = 20  # labelled paired predictions needed for the online loss check
    wait_for_labels: bool = False  # hold the step before 100 % until the online loss passes
    bake_analyses: int = 0  # passing analyses needed at the step before 100 %
    affinity: str = "auto"  # request | entity | auto (serving/routing.py)
    min_sticky_entities: int = 5000

    def __post_init__(self) -> None:
        weights = self.step_weights
        if not weights or any(b <= a for a, b in pairwise(weights)):
            raise ValueError(f"step_weights must be non-empty and increasing, got {weights}")
        if weights[0] <= 0 or weights[-1] != 100:
            raise ValueError(f"step_weights must rise from > 0 to exactly 100, got {weights}")
        if min(self.failure_threshold, self.max_inconclusive) < 1:
            raise ValueError("failure_threshold and max_inconclusive must be at least 1")
        if self.affinity not in ("request", "entity", "auto"):
            raise ValueError(f"affinity must be request, entity or auto, got {self.affinity!r}")

    def shift_limit(self) -> float:
        """The prediction-shift limit of this release, calibrated on the offline difference."""
        if self.offline_shift is None or not math.isfinite(self.offline_shift):
            return self.max_prediction_shift
        calibrated = max(SHIFT_FLOOR, self.shift_tolerance * self.offline_shift)
        return min(self.max_prediction_shift, calibrated)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CanaryPolicy:
        data = _known_fields(cls, text)
        return cls(**{**data, "step_weights": tuple(data.get("step_weights", (5, 25, 50, 100)))})


SHIFT_FLOOR = 0.25  # a calibrated shift limit never goes below this (a retrain differs a little)


def prediction_shift(canary: np.ndarray, champion: np.ndarray) -> float:
    """Mean |canary - champion| on the same inputs over the champion's mean absolute deviation.

    Paired, so a model that is better and different by a little scores a little, while a
    constant (about 1), shuffled (about 1.4) or wildly scaled model scores a lot.
    """
    canary, champion = np.asarray(canary, dtype=float), np.asarray(champion, dtype=float)
    if len(canary) != len(champion) or not len(canary):
        raise ValueError("prediction_shift needs two non-empty arrays of the same length")
    if not np.isfinite(canary).all():
        return math.inf
    spread = float(np.mean(np.abs(champion - champion.mean())))
    difference = float(np.mean(np.abs(canary - champion)))
    if spread <= 0:
        return 0.0 if difference <= 0 else math.inf
    return difference / spread


@dataclass(frozen=True)
class VariantStats:
    """Cumulative counters of one (variant, version) as scraped."""

    requests: float = 0.0
    errors: float = 0.0
    latency_buckets: Buckets = ()
    prediction_buckets: Buckets = ()

    def to_dict(self) -> dict:
        """Strict-JSON form for a sensor cursor (+inf becomes "+Inf", as in the exposition)."""
        data = asdict(self)
        for name in ("latency_buckets", "prediction_buckets"):
            data[name] = [[le if math.isfinite(le) else "+Inf", n] for le, n in data[name]]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> VariantStats:
        def buckets(name: str) -> Buckets:
            return tuple((float(le), float(count)) for le, count in data[name])

        requests, errors = float(data["requests"]), float(data["errors"])
        return cls(requests, errors, buckets("latency_buckets"), buckets("prediction_buckets"))


def parse_metrics(text: str, pipeline: str) -> dict[tuple[str, str], VariantStats]:
    """Cumulative stats per (variant, version) of one pipeline from a `/metrics` scrape.

    Matches sample names rather than family names because the parser strips `_total` from counter
    families. Identical label sets are summed, so several exporters add up.
    """
    counts: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    hists: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(float)))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("pipeline") != pipeline or "variant" not in labels:
                continue
            key = (labels["variant"], labels.get("version", ""))
            if sample.name in (REQUESTS, ERRORS):
                counts[key][sample.name] += sample.value
            elif sample.name in (f"{LATENCY}_bucket", f"{PREDICTION}_bucket"):
                hists[key][sample.name][float(labels["le"])] += sample.value
    return {
        key: VariantStats(
            requests=counts[key][REQUESTS],
            errors=counts[key][ERRORS],
            latency_buckets=tuple(sorted(hists[key][f"{LATENCY}_bucket"].items())),
            prediction_buckets=tuple(sorted(hists[key][f"{PREDICTION}_bucket"].items())),
        )
        for key in counts.keys() | hists.keys()
    }


def _bucket_delta(now: Buckets, before: Buckets) -> Buckets | None:
    if not before:
        return now
    previous = dict(before)
    if set(previous) != {le for le, _ in now}:
        return None
    delta = tuple((le, count - previous[le]) for le, count in now)
    return None if any(count < 0 for _, count in delta) else delta


def subtract(now: VariantStats, before: VariantStats | None) -> VariantStats:
    """What happened in the interval; a counter that went down means a restart, so `now` is new."""
    if before is None:
        return now
    latency = _bucket_delta(now.latency_buckets, before.latency_buckets)
    prediction = _bucket_delta(now.prediction_buckets, before.prediction_buckets)
    requests, errors = now.requests - before.requests, now.errors - before.errors
    if latency is None or prediction is None or requests < 0 or errors < 0:
        return now
    return VariantStats(requests, errors, latency, prediction)


def histogram_quantile(buckets: Buckets, q: float) -> float | None:
    """Prometheus' `histogram_quantile`: linear interpolation inside the bucket holding rank q.

    A rank in the +Inf bucket returns the largest finite bound, so the value is a lower bound there.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for i, (le, count) in enumerate(buckets):
        if count >= rank:
            if math.isinf(le):
                return lower if i > 0 else None
            if i == 0 and le <= 0:
                return le
            in_bucket = count - below
            return lower if in_bucket <= 0 else lower + (le - lower) * (rank - below) / in_bucket
        lower, below = le, count
    return lower  # unreachable: the last bucket holds every observation


class Status(StrEnum):
    SUCCESSFUL = "successful"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class CheckResult:
    """One metric's verdict; `value` is None exactly when the check is inconclusive."""

    name: str
    status: Status
    value: float | None
    limit: float
    detail: str


@dataclass(frozen=True)
class OnlineMae:
    canary_mae: float | None
    champion_mae: float | None
    canary_n: int
    champion_n: int


def _verdict(name: str, value: float, limit: float, text: str, unit: str = "") -> CheckResult:
    ok = value <= limit
    shown = (lambda v: f"{v * 100:.2f} %") if unit == "%" else (lambda v: f"{v:.3g}{unit}")
    detail = f"{text} ({shown(value)} {'<=' if ok else '>'} {shown(limit)})"
    return CheckResult(name, Status.SUCCESSFUL if ok else Status.FAILED, value, limit, detail)


def _pending(name: str, limit: float, detail: str) -> CheckResult:
    return CheckResult(name, Status.INCONCLUSIVE, None, limit, detail)


def _traffic_checks(canary: VariantStats, p: CanaryPolicy) -> list[CheckResult]:
    n = canary.requests
    if n < p.min_requests:
        few = f"only {n:g} canary requests in the interval (need {p.min_requests})"
        return [
            _pending("error_rate", p.max_error_rate, few),
            _pending("p99_latency_ms", p.max_p99_latency_ms, few),
        ]
    text = f"{canary.errors:g} errors in {n:g} canary requests"
    results = [_verdict("error_rate", canary.errors / n, p.max_error_rate, text, "%")]
    p99 = histogram_quantile(canary.latency_buckets, 0.99)
    if p99 is None:
        results.append(_pending("p99_latency_ms", p.max_p99_latency_ms, "no canary latencies"))
    else:
        ms, text = p99 * 1000, "canary p99 latency"
        results.append(_verdict("p99_latency_ms", ms, p.max_p99_latency_ms, text, " ms"))
    return results


def _shift_check(paired: Paired | None, p: CanaryPolicy) -> CheckResult:
    """Broken, not different: the canary's answers against the champion's for the same requests."""
    limit = p.shift_limit()
    n = 0 if paired is None else len(paired.canary)
    if n < max(p.min_predictions, 1):
        why = f"only {n} canary predictions with the champion's answer so far (need "
        return _pending("prediction_shift", limit, f"{why}{p.min_predictions})")
    shift = prediction_shift(paired.canary, paired.champion)
    offline = "uncalibrated" if p.offline_shift is None else f"offline {p.offline_shift:.3g}"
    text = f"shift of {n} canary predictions from the champion's on the same requests ({offline})"
    return _verdict("prediction_shift", shift, limit, text)


@dataclass(frozen=True)
class Paired:
    """The canary's predictions and the shadow champion's for the same requests."""

    canary: np.ndarray
    champion: np.ndarray


def _mae_check(mae: OnlineMae | None, p: CanaryPolicy) -> CheckResult:
    name, limit = "online_mae_ratio", p.max_mae_ratio
    if mae is None or mae.canary_mae is None or mae.champion_mae is None:
        return _pending(name, limit, "no labelled predictions yet")
    if min(mae.canary_n, mae.champion_n) < p.min_labelled:
        detail = (
            f"{mae.canary_n} canary and {mae.champion_n} champion labelled predictions "
            f"(need {p.min_labelled} each)"
        )
        return _pending(name, limit, detail)
    if mae.champion_mae > 0:
        ratio = mae.canary_mae / mae.champion_mae
    else:
        ratio = 1.0 if mae.canary_mae == 0 else math.inf
    text = f"canary MAE {mae.canary_mae:.3g} / champion MAE {mae.champion_mae:.3g}"
    return _verdict(name, ratio, limit, text)


def run_checks(
    canary_interval: VariantStats,
    policy: CanaryPolicy,
    mae: OnlineMae | None = None,
    *,
    paired: Paired | None = None,
) -> list[CheckResult]:
    """Judge one interval of canary traffic; too little evidence is inconclusive, never a pass.

    Error rate and latency use the interval; the prediction shift uses every paired prediction
    since the release began (a model's outputs do not change by the minute, and at a 5 % weight
    one interval holds few), and the online loss every labelled paired prediction.
    """
    return [
        *_traffic_checks(canary_interval, policy),
        _shift_check(paired, policy),
        _mae_check(mae, policy),
    ]


class Phase(StrEnum):
    PROGRESSING = "progressing"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class CanaryState:
    """Where one canary version's release stands; lives in the sensor cursor between ticks."""

    version: str
    step: int = 0  # index into policy.step_weights
    failed: int = 0  # cumulative over the release
    inconclusive: int = 0  # consecutive
    phase: Phase = Phase.PROGRESSING
    reason: str = ""
    passes: int = 0  # consecutive passing analyses at the current step (bake time)

    def weight(self, policy: CanaryPolicy) -> int:
        """Percent of requests for the canary: 0 once rolled back, so the champion serves all."""
        if self.phase == Phase.ROLLBACK:
            return 0
        return policy.step_weights[min(self.step, len(policy.step_weights) - 1)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CanaryState:
        data = _known_fields(cls, text)
        return cls(**{**data, "phase": Phase(data["phase"])})


def advance(state: CanaryState, results: list[CheckResult], policy: CanaryPolicy) -> CanaryState:
    """The next state after one analysis: a failure counts towards rollback, too little traffic
    holds the weight (and rolls back when it persists), and a clean interval steps up."""
    if state.phase != Phase.PROGRESSING:
        return state
    weight = state.weight(policy)
    failed = [r for r in results if r.status == Status.FAILED]
    if failed:
        count = state.failed + 1
        why = "; ".join(f"{r.name}: {r.detail}" for r in failed)
        if count >= policy.failure_threshold:
            reason = f"rolled back at {weight} % after {count} failed analyses; last: {why}"
            return replace(state, failed=count, inconclusive=0, phase=Phase.ROLLBACK, reason=reason)
        reason = f"analysis failed at {weight} % ({count}/{policy.failure_threshold}): {why}"
        return replace(state, failed=count, inconclusive=0, reason=reason)
    passed = {r.name for r in results if r.status == Status.SUCCESSFUL}
    if not passed.issuperset(CORE_CHECKS):
        count = state.inconclusive + 1
        seen = {r.name: r.detail for r in results}
        why = "; ".join(f"{n}: {seen.get(n, 'not run')}" for n in CORE_CHECKS if n not in passed)
        if count >= policy.max_inconclusive:
            reason = f"not enough canary traffic: {count} inconclusive analyses in a row ({why})"
            return replace(state, inconclusive=count, phase=Phase.ROLLBACK, reason=reason)
        reason = f"holding at {weight} % ({count}/{policy.max_inconclusive} inconclusive): {why}"
        return replace(state, inconclusive=count, passes=0, reason=reason)
    passes = state.passes + 1
    if state.step == len(policy.step_weights) - 2:  # the last step before 100 %: bake
        online = next((r for r in results if r.name == "online_mae_ratio"), None)
        if policy.wait_for_labels and (online is None or online.status != Status.SUCCESSFUL):
            why = "not run" if online is None else online.detail
            reason = f"baking at {weight} %: waiting for labels ({why})"
            return replace(state, inconclusive=0, passes=passes, reason=reason)
        if passes < policy.bake_analyses:
            reason = f"baking at {weight} %: {passes}/{policy.bake_analyses} passing analyses"
            return replace(state, inconclusive=0, passes=passes, reason=reason)
    if state.step >= len(policy.step_weights) - 1:
        reason = f"all checks passed at {weight} %: promote"
        return replace(state, inconclusive=0, passes=passes, phase=Phase.PROMOTE, reason=reason)
    step = state.step + 1
    reason = f"checks passed at {weight} %: canary weight now {policy.step_weights[step]} %"
    return replace(state, step=step, inconclusive=0, passes=0, reason=reason)


def online_mae(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    entity_keys: list[str],
    target: str,
    loss: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> pd.DataFrame:
    """Online MAE per (variant, model_version) from the prediction log joined to arrived labels.

    `loss(labels, predictions)` replaces the absolute error per row (a classifier passes log loss
    of its probabilities); the column keeps the name `mae`.

    Pass the predictions of the canary's lifetime only, so both variants are judged on the same
    days. Every logged prediction counts, so entities requested often weigh more.
    """
    logged = [*entity_keys, "prediction_for", "variant", "model_version", "prediction"]
    labelled = [*entity_keys, "date", target]
    for frame_name, frame, needed in (
        ("predictions", predictions, logged),
        ("labels", labels, labelled),
    ):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"{frame_name} lack columns {missing}")
    columns = ["variant", "model_version", "mae", "n"]
    left = predictions[logged].dropna(subset=["prediction"])
    day = pd.to_datetime(left["prediction_for"]).dt.normalize()
    left = left.assign(_day=day, model_version=left["model_version"].astype(str))
    right = labels[labelled].dropna(subset=[target])
    right = right.assign(_day=pd.to_datetime(right["date"]).dt.normalize())
    right = right.drop_duplicates([*entity_keys, "_day"], keep="last")
    joined = left.merge(right[[*entity_keys, "_day", target]], on=[*entity_keys, "_day"])
    if joined.empty:
        dtypes = ("object", "object", "float64", "int64")
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(columns, dtypes, strict=True)})
    if loss is None:
        joined["_abs"] = (joined["prediction"] - joined[target]).abs()
    else:
        actual, predicted = joined[target].to_numpy("float64"), joined["prediction"].to_numpy()
        joined["_abs"] = loss(actual, predicted.astype("float64"))
    by_model = joined.groupby(["variant", "model_version"], as_index=False)
    return by_model.agg(mae=("_abs", "mean"), n=("_abs", "size"))[columns]


def mae_for(table: pd.DataFrame, canary_version: str, champion_version: str) -> OnlineMae:
    """Pick the two variants' rows out of `online_mae`'s table (absent rows mean no labels yet)."""

    def pick(variant: str, version: str) -> tuple[float | None, int]:
        row = table[(table["variant"] == variant) & (table["model_version"] == str(version))]
        return (float(row["mae"].iloc[0]), int(row["n"].iloc[0])) if len(row) else (None, 0)

    canary_mae, canary_n = pick("canary", canary_version)
    champion_mae, champion_n = pick("champion", champion_version)
    return OnlineMae(canary_mae, champion_mae, canary_n, champion_n)


SHADOW_COLUMN = "shadow_prediction"  # the champion's answer logged beside each canary answer


def paired_predictions(log: pd.DataFrame, canary_version: str) -> Paired:
    """The canary's logged answers and the shadow champion's for the same requests."""
    if log.empty or SHADOW_COLUMN not in log.columns:
        return Paired(np.empty(0), np.empty(0))
    rows = log[(log["variant"] == "canary") & (log["model_version"].astype(str) == canary_version)]
    rows = rows.dropna(subset=[SHADOW_COLUMN])
    return Paired(rows["prediction"].to_numpy(float), rows[SHADOW_COLUMN].to_numpy(float))


def paired_online_loss(
    log: pd.DataFrame,
    labels: pd.DataFrame,
    entity_keys: list[str],
    target: str,
    canary_version: str,
    loss: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> OnlineMae:
    """Online loss of the canary and of the shadow champion on the *same* requests.

    Each canary answer is logged with the champion's answer for the same entity and day, so once
    labels join both are judged on identical rows (not the canary's entities against the
    champion's others).
    """
    if log.empty or SHADOW_COLUMN not in log.columns:
        return OnlineMae(None, None, 0, 0)
    rows = log[(log["variant"] == "canary") & (log["model_version"].astype(str) == canary_version)]
    rows = rows.dropna(subset=[SHADOW_COLUMN])
    shadow = rows.assign(variant="champion", prediction=rows[SHADOW_COLUMN])
    table = online_mae(
        pd.concat([rows, shadow], ignore_index=True), labels, entity_keys, target, loss
    )
    return mae_for(table, canary_version, canary_version)  # shadow rows keep the canary's version


def _known_fields(cls: type, text: str) -> dict:
    """A stored dataclass's JSON, keeping only the fields this version knows (a cursor or tag
    written by another version must not break the sensor)."""
    known = {f.name for f in fields(cls)}
    return {k: v for k, v in json.loads(text).items() if k in known}
