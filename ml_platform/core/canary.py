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
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from itertools import pairwise

import numpy as np
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from ml_platform.core import drift

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
CORE_CHECKS = ("error_rate", "p99_latency_ms", "prediction_psi")  # must pass for the weight to rise

Buckets = tuple[tuple[float, float], ...]  # (upper bound le, cumulative count), sorted, +inf last


@dataclass(frozen=True)
class CanaryPolicy:
    """Limits and pace of one release; defaults follow Flagger's step analysis."""

    step_weights: tuple[int, ...] = (5, 25, 50, 100)  # percent of entities routed to the canary
    failure_threshold: int = 2  # failed analyses (cumulative over the release) before rollback
    max_inconclusive: int = 10  # consecutive inconclusive analyses before rollback
    min_requests: int = 20  # canary requests in the interval for the interval to be conclusive
    max_error_rate: float = 0.01
    max_p99_latency_ms: float = 100.0
    max_prediction_psi: float = 0.2  # canary predictions (interval) vs champion (cumulative)
    # PSI of a sample of n against its own distribution is about (buckets - 1) / n: with 20
    # predictions an identical model fails 0.2 almost always, with 200 about once in 2000.
    min_predictions: int = 200
    max_mae_ratio: float = 1.1  # canary online MAE / champion online MAE, once labels arrive
    min_labelled: int = 20  # labelled predictions per variant needed for the MAE check

    def __post_init__(self) -> None:
        weights = self.step_weights
        if not weights or any(b <= a for a, b in pairwise(weights)):
            raise ValueError(f"step_weights must be non-empty and increasing, got {weights}")
        if weights[0] <= 0 or weights[-1] > 100:
            raise ValueError(f"step_weights must lie in (0, 100], got {weights}")
        if min(self.failure_threshold, self.max_inconclusive) < 1:
            raise ValueError("failure_threshold and max_inconclusive must be at least 1")


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


def _counts(buckets: Buckets) -> np.ndarray:
    return np.diff(np.array([count for _, count in buckets], dtype=float), prepend=0.0)


def bucket_psi(
    reference: Buckets, current: Buckets, epsilon: float = drift.PSI_EPSILON
) -> float | None:
    """Population stability index over the histograms' buckets (`drift.psi`); None when either
    side has no observations."""
    if not reference or not current or reference[-1][1] <= 0 or current[-1][1] <= 0:
        return None
    if [le for le, _ in reference] != [le for le, _ in current]:
        raise ValueError("histograms have different bucket bounds; PSI needs the same buckets")
    return drift.psi(_counts(reference), _counts(current), epsilon)


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


def _traffic_checks(
    canary: VariantStats, champion: VariantStats, p: CanaryPolicy, since_start: VariantStats | None
) -> list[CheckResult]:
    n, limits = canary.requests, (p.max_error_rate, p.max_p99_latency_ms, p.max_prediction_psi)
    if n < p.min_requests:
        few = f"only {n:g} canary requests in the interval (need {p.min_requests})"
        return [_pending(name, limit, few) for name, limit in zip(CORE_CHECKS, limits, strict=True)]
    text = f"{canary.errors:g} errors in {n:g} canary requests"
    results = [_verdict("error_rate", canary.errors / n, p.max_error_rate, text, "%")]
    p99 = histogram_quantile(canary.latency_buckets, 0.99)
    if p99 is None:
        results.append(_pending("p99_latency_ms", p.max_p99_latency_ms, "no canary latencies"))
    else:
        ms, text = p99 * 1000, "canary p99 latency"
        results.append(_verdict("p99_latency_ms", ms, p.max_p99_latency_ms, text, " ms"))
    sample, window = (canary, "in the interval") if since_start is None else (since_start, "so far")
    predicted = sample.prediction_buckets[-1][1] if sample.prediction_buckets else 0.0
    if not champion.prediction_buckets or champion.prediction_buckets[-1][1] <= 0:
        why = "the champion has no predictions to compare with yet"
        results.append(_pending("prediction_psi", p.max_prediction_psi, why))
    elif predicted < max(p.min_predictions, 1):
        why = f"only {predicted:g} canary predictions {window} (need {p.min_predictions})"
        results.append(_pending("prediction_psi", p.max_prediction_psi, why))
    else:
        psi = bucket_psi(champion.prediction_buckets, sample.prediction_buckets)
        text = f"PSI of {predicted:g} canary predictions {window} against the champion's"
        results.append(_verdict("prediction_psi", psi, p.max_prediction_psi, text))
    return results


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
    champion_reference: VariantStats,
    policy: CanaryPolicy,
    mae: OnlineMae | None = None,
    *,
    canary_cumulative: VariantStats | None = None,
) -> list[CheckResult]:
    """Judge one interval of canary traffic; too little evidence is inconclusive, never a pass.

    Pass `canary_cumulative` (the canary version's scrape) to judge prediction drift on all its
    predictions so far: a model's output distribution does not change by the minute, and at a 5 %
    weight one interval rarely holds the `min_predictions` a stable PSI needs.
    """
    return [
        *_traffic_checks(canary_interval, champion_reference, policy, canary_cumulative),
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

    def weight(self, policy: CanaryPolicy) -> int:
        """Percent of entities for the canary: 0 once rolled back, so the champion serves all."""
        if self.phase == Phase.ROLLBACK:
            return 0
        return policy.step_weights[min(self.step, len(policy.step_weights) - 1)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CanaryState:
        data = json.loads(text)
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
        return replace(state, inconclusive=count, reason=reason)
    if state.step >= len(policy.step_weights) - 1:
        reason = f"all checks passed at {weight} %: promote"
        return replace(state, inconclusive=0, phase=Phase.PROMOTE, reason=reason)
    step = state.step + 1
    reason = f"checks passed at {weight} %: canary weight now {policy.step_weights[step]} %"
    return replace(state, step=step, inconclusive=0, reason=reason)


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
