"""Canary analysis: real Prometheus text in, Flagger-style decisions out."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from ml_platform.core import canary
from ml_platform.core.canary import (
    LATENCY_BUCKETS,
    PREDICTION_BUCKETS,
    CanaryPolicy,
    CanaryState,
    CheckResult,
    OnlineMae,
    Paired,
    Phase,
    Status,
    VariantStats,
    advance,
    histogram_quantile,
    mae_for,
    online_mae,
    paired_online_loss,
    paired_predictions,
    parse_metrics,
    prediction_shift,
    run_checks,
    subtract,
)

PIPELINE = "sales_forecast"
LABELS = ("pipeline", "variant", "version")
POLICY = CanaryPolicy()
rng = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def _reseed() -> None:
    """Every test draws the same numbers whichever tests ran before it."""
    rng.bit_generator.state = np.random.default_rng(7).bit_generator.state


class App:
    """The serving app's metrics, made with prometheus_client itself."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(canary.REQUESTS, "requests", LABELS, registry=r)
        self.errors = Counter(canary.ERRORS, "errors", LABELS, registry=r)
        self.latency = Histogram(canary.LATENCY, "s", LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.prediction = Histogram(
            canary.PREDICTION, "units", LABELS, buckets=PREDICTION_BUCKETS, registry=r
        )

    def serve(self, variant, version, latencies, predictions=(), errors=0, pipeline=PIPELINE):
        labels = (pipeline, variant, version)
        self.requests.labels(*labels).inc(len(latencies))
        self.errors.labels(*labels).inc(errors)
        for seconds in latencies:
            self.latency.labels(*labels).observe(seconds)
        for value in predictions:
            self.prediction.labels(*labels).observe(value)

    def scrape(self) -> str:
        return generate_latest(self.registry).decode()


def _buckets(observed, bounds) -> tuple[tuple[float, float], ...]:
    """Cumulative buckets as Prometheus fills them (a value lands in the first bound >= it)."""
    edges = [*map(float, bounds), math.inf]
    counts = np.bincount(np.searchsorted(edges, observed, side="left"), minlength=len(edges))
    return tuple(zip(edges, np.cumsum(counts).astype(float).tolist(), strict=True))


def _sales(n: int, scale: float = 1.0) -> np.ndarray:
    return rng.lognormal(3.5, 0.8, n) * scale


def _stats(requests=400, errors=0, latency_s=0.02, predictions=None) -> VariantStats:
    latencies = np.full(requests, latency_s)
    predictions = _sales(requests) if predictions is None else predictions
    return VariantStats(
        requests,
        errors,
        _buckets(latencies, LATENCY_BUCKETS),
        _buckets(predictions, PREDICTION_BUCKETS),
    )


def _by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def _results(**statuses: Status) -> list[CheckResult]:
    names = (*canary.CORE_CHECKS, "online_mae_ratio")
    return [
        CheckResult(n, statuses.get(n, Status.SUCCESSFUL), 1.0, 2.0, f"{n} detail") for n in names
    ]


# --- parsing real exposition text ---------------------------------------------------------------


def test_parse_real_exposition_keeps_versions_apart_and_ignores_other_pipelines():
    app = App()
    app.serve("champion", "3", [0.004] * 30, predictions=[12.0] * 30)
    app.serve("canary", "4", [0.02] * 7, predictions=[0.0, 60.0], errors=2)
    app.serve("canary", "5", [3.0] * 5)  # a newer canary version, same variant
    app.serve("champion", "3", [9.9] * 50, errors=50, pipeline="churn")

    stats = parse_metrics(app.scrape(), PIPELINE)

    assert set(stats) == {("champion", "3"), ("canary", "4"), ("canary", "5")}
    champion, old, new = stats["champion", "3"], stats["canary", "4"], stats["canary", "5"]
    assert (champion.requests, champion.errors) == (30, 0)
    assert (old.requests, old.errors) == (7, 2)
    assert [le for le, _ in champion.latency_buckets] == [*LATENCY_BUCKETS, math.inf]
    assert dict(champion.latency_buckets)[0.005] == 30
    assert dict(champion.latency_buckets)[0.0025] == 0
    assert dict(old.prediction_buckets) == {
        **{float(b): (1.0 if b < 75 else 2.0) for b in PREDICTION_BUCKETS},
        math.inf: 2.0,
    }
    assert new.latency_buckets[-1] == (math.inf, 5) and new.latency_buckets[-2] == (2.5, 0)
    assert new.prediction_buckets == ()  # never predicted: no histogram samples at all


def test_parse_sums_processes_of_a_multiprocess_app(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for pid in (101, 102):  # two uvicorn workers writing their own mmap files
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda pid=pid: pid))
        App().serve("canary", "4", [0.01] * pid, predictions=[5.0] * 3, errors=1)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(tmp_path))

    stats = parse_metrics(generate_latest(registry).decode(), PIPELINE)

    canary_stats = stats["canary", "4"]
    assert (canary_stats.requests, canary_stats.errors) == (203, 2)
    assert canary_stats.latency_buckets[-1] == (math.inf, 203)
    assert dict(canary_stats.prediction_buckets)[5.0] == 6


def test_parse_sums_identical_label_sets():
    line = f'{canary.REQUESTS}{{pipeline="{PIPELINE}",variant="canary",version="4"}} 3.0\n'
    text = f"# TYPE {canary.REQUESTS} counter\n{line}{line}"
    assert parse_metrics(text, PIPELINE)["canary", "4"].requests == 6
    assert parse_metrics(text, "churn") == {}


# --- interval deltas ----------------------------------------------------------------------------


def test_subtract_gives_exactly_the_interval():
    app, interval_only = App(), App()
    app.serve("canary", "4", [0.003] * 40, predictions=[7.0] * 40, errors=1)
    before = parse_metrics(app.scrape(), PIPELINE)["canary", "4"]
    for target in (app, interval_only):
        target.serve("canary", "4", [0.2] * 25, predictions=[300.0] * 25, errors=3)
    now = parse_metrics(app.scrape(), PIPELINE)["canary", "4"]

    assert subtract(now, before) == parse_metrics(interval_only.scrape(), PIPELINE)["canary", "4"]
    assert subtract(now, None) is now


def test_subtract_treats_a_counter_reset_as_a_fresh_start():
    before = _stats(500, errors=2)
    restarted = _stats(30)
    assert subtract(restarted, before) is restarted
    assert subtract(VariantStats(600, 1, before.latency_buckets), before).requests == 600


def test_variant_stats_survive_a_strict_json_cursor():
    stats = _stats(50, errors=1)
    text = json.dumps(stats.to_dict(), allow_nan=False)
    assert VariantStats.from_dict(json.loads(text)) == stats


# --- quantiles and PSI --------------------------------------------------------------------------


def test_p99_of_real_histogram_falls_in_the_true_p99_bucket():
    latencies = rng.gamma(2.0, 0.006, 1000)
    app = App()
    app.serve("canary", "4", latencies)
    buckets = parse_metrics(app.scrape(), PIPELINE)["canary", "4"].latency_buckets

    estimate, truth = histogram_quantile(buckets, 0.99), float(np.quantile(latencies, 0.99))
    edges = [0.0, *LATENCY_BUCKETS]
    bucket = np.searchsorted(edges, truth, side="left")
    assert edges[bucket - 1] <= estimate <= edges[bucket]


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = ((0.1, 0.0), (0.2, 50.0), (0.4, 100.0), (math.inf, 100.0))
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.2)
    assert histogram_quantile(buckets, 0.75) == pytest.approx(0.3)
    assert histogram_quantile(buckets, 0.25) == pytest.approx(0.15)
    assert histogram_quantile(((0.1, 1.0), (2.5, 1.0), (math.inf, 10.0)), 0.99) == 2.5
    assert histogram_quantile(((0.1, 0.0), (math.inf, 0.0)), 0.5) is None
    assert histogram_quantile((), 0.5) is None
    with pytest.raises(ValueError, match="quantile"):
        histogram_quantile(buckets, 99)


def _paired(n: int = 400, canary=None) -> Paired:
    champion = _sales(n)
    return Paired(champion * 1.05 if canary is None else canary(champion), champion)


def test_prediction_shift_catches_broken_models_not_better_ones():
    champion = _sales(2000)
    better = champion * rng.normal(1.0, 0.1, champion.size)  # a retrain: close, a little apart
    assert prediction_shift(champion, champion) == 0
    assert prediction_shift(better, champion) < 0.25
    constant = np.full(champion.size, np.median(champion))
    assert prediction_shift(constant, champion) > 0.75
    assert prediction_shift(rng.permutation(champion), champion) > 1.0
    assert prediction_shift(np.full(champion.size, np.nan), champion) == math.inf
    with pytest.raises(ValueError, match="same length"):
        prediction_shift(champion[:3], champion)


def test_shift_limit_is_calibrated_on_the_offline_difference_within_floor_and_cap():
    assert CanaryPolicy().shift_limit() == 0.75  # uncalibrated: the cap
    assert CanaryPolicy(offline_shift=0.01).shift_limit() == canary.SHIFT_FLOOR
    assert CanaryPolicy(offline_shift=0.3).shift_limit() == pytest.approx(0.6)
    assert CanaryPolicy(offline_shift=2.0).shift_limit() == 0.75  # never lets a constant through
    policy = CanaryPolicy(offline_shift=0.3, affinity="request", step_weights=(10, 100))
    assert CanaryPolicy.from_json(policy.to_json()) == policy


# --- checks -------------------------------------------------------------------------------------


def test_healthy_canary_passes_every_traffic_check():
    checks = _by_name(run_checks(_stats(400), POLICY, paired=_paired()))
    assert [c.status for c in checks.values()] == [Status.SUCCESSFUL] * 3 + [Status.INCONCLUSIVE]
    assert checks["p99_latency_ms"].value == pytest.approx(20, abs=5)
    assert checks["prediction_shift"].value < POLICY.shift_limit()


def test_each_traffic_check_fails_on_its_own_fault():
    errors = _by_name(run_checks(_stats(212, errors=3), POLICY))["error_rate"]
    assert errors.status == Status.FAILED
    assert errors.detail == "3 errors in 212 canary requests (1.42 % > 1.00 %)"
    slow = _by_name(run_checks(_stats(400, latency_s=0.3), POLICY))
    assert slow["p99_latency_ms"].status == Status.FAILED and slow["p99_latency_ms"].value > 100
    assert slow["error_rate"].status == Status.SUCCESSFUL
    constant = _paired(canary=lambda c: np.full(c.size, c.mean()))
    shift = _by_name(run_checks(_stats(400), POLICY, paired=constant))["prediction_shift"]
    assert shift.status == Status.FAILED and shift.value > POLICY.shift_limit()


def test_too_little_evidence_is_inconclusive_never_a_pass():
    quiet = run_checks(_stats(POLICY.min_requests - 1, errors=5), POLICY)
    assert {r.status for r in quiet} == {Status.INCONCLUSIVE}
    assert all(r.value is None for r in quiet)
    assert "19 canary requests" in quiet[0].detail

    few = _by_name(run_checks(_stats(400), POLICY, paired=_paired(POLICY.min_predictions - 1)))
    assert few["prediction_shift"].status == Status.INCONCLUSIVE
    assert "only 49 canary predictions" in few["prediction_shift"].detail
    none = _by_name(run_checks(_stats(400), POLICY))["prediction_shift"]
    assert none.status == Status.INCONCLUSIVE and none.value is None


@pytest.mark.parametrize(
    ("mae", "status"),
    [
        (None, Status.INCONCLUSIVE),
        (OnlineMae(5.0, 5.0, 19, 500), Status.INCONCLUSIVE),
        (OnlineMae(None, 5.0, 0, 500), Status.INCONCLUSIVE),
        (OnlineMae(5.4, 5.0, 20, 500), Status.SUCCESSFUL),
        (OnlineMae(6.0, 5.0, 20, 500), Status.FAILED),
        (OnlineMae(0.0, 0.0, 20, 20), Status.SUCCESSFUL),
        (OnlineMae(0.1, 0.0, 20, 20), Status.FAILED),
    ],
)
def test_online_mae_ratio_check(mae, status):
    check = _by_name(run_checks(_stats(400), POLICY, mae))["online_mae_ratio"]
    assert check.status == status
    assert (check.value is None) == (status == Status.INCONCLUSIVE)


# --- the release state machine ------------------------------------------------------------------


def test_four_good_intervals_walk_5_25_50_100_then_promote():
    state, weights = CanaryState("4"), []
    for _ in range(4):
        weights.append(state.weight(POLICY))
        state = advance(state, _results(online_mae_ratio=Status.INCONCLUSIVE), POLICY)
    assert weights == [5, 25, 50, 100]
    assert state.phase == Phase.PROMOTE and state.weight(POLICY) == 100
    assert advance(state, _results(error_rate=Status.FAILED), POLICY) is state


def test_failures_accumulate_over_the_release_then_roll_back():
    state = advance(CanaryState("4"), _results(p99_latency_ms=Status.FAILED), POLICY)
    assert (state.phase, state.step, state.failed) == (Phase.PROGRESSING, 0, 1)
    state = advance(state, _results(), POLICY)  # a good interval does not forgive the failure
    assert (state.step, state.failed) == (1, 1)
    state = advance(state, _results(prediction_shift=Status.FAILED), POLICY)
    assert state.phase == Phase.ROLLBACK and state.weight(POLICY) == 0
    assert "prediction_shift" in state.reason and "prediction_shift detail" in state.reason
    assert "p99_latency_ms" not in state.reason


def test_inconclusive_holds_the_step_and_rolls_back_when_traffic_never_comes():
    state = advance(CanaryState("4", step=1), _results(error_rate=Status.INCONCLUSIVE), POLICY)
    assert (state.step, state.inconclusive, state.phase) == (1, 1, Phase.PROGRESSING)
    assert advance(state, _results(), POLICY).inconclusive == 0
    for _ in range(POLICY.max_inconclusive - 1):
        assert state.phase == Phase.PROGRESSING and state.step == 1
        state = advance(state, _results(prediction_shift=Status.INCONCLUSIVE), POLICY)
    assert state.phase == Phase.ROLLBACK
    assert state.reason.startswith("not enough canary traffic")


def test_missing_core_check_is_not_a_pass():
    results = [r for r in _results() if r.name != "p99_latency_ms"]
    state = advance(CanaryState("4"), results, POLICY)
    assert (state.step, state.inconclusive) == (0, 1) and "p99_latency_ms: not run" in state.reason


def test_online_mae_failure_counts_but_its_absence_does_not_block():
    state = advance(CanaryState("4", step=3), _results(online_mae_ratio=Status.FAILED), POLICY)
    assert (state.failed, state.phase) == (1, Phase.PROGRESSING)
    state = advance(state, _results(online_mae_ratio=Status.FAILED), POLICY)
    assert state.phase == Phase.ROLLBACK and "online_mae_ratio" in state.reason


def test_state_json_round_trip():
    state = CanaryState("7", step=2, failed=1, inconclusive=3, reason="holding at 50 %")
    again = CanaryState.from_json(state.to_json())
    assert again == state and isinstance(again.phase, Phase)
    rolled = CanaryState("7", phase=Phase.ROLLBACK)
    assert CanaryState.from_json(rolled.to_json()).weight(POLICY) == 0


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="increasing"):
        CanaryPolicy(step_weights=(50, 25))
    with pytest.raises(ValueError, match="exactly 100"):
        CanaryPolicy(step_weights=(5, 150))
    with pytest.raises(ValueError, match="exactly 100"):
        CanaryPolicy(step_weights=(5, 50))  # the spec's rule too: a release ends at 100 %
    with pytest.raises(ValueError, match="affinity"):
        CanaryPolicy(affinity="sometimes")
    with pytest.raises(ValueError, match="at least 1"):
        CanaryPolicy(failure_threshold=0)


def _release(app: App, requests_per_interval: int, policy: CanaryPolicy = POLICY) -> CanaryState:
    """The sensor's loop over real scrapes: delta, checks, next state, until a decision."""
    state, previous, paired = CanaryState("4"), None, Paired(np.empty(0), np.empty(0))
    while state.phase == Phase.PROGRESSING:
        n_canary = requests_per_interval * state.weight(policy) // 100
        app.serve("canary", "4", rng.gamma(2.0, 0.004, n_canary), _sales(n_canary))
        scraped = parse_metrics(app.scrape(), PIPELINE)
        interval = subtract(scraped["canary", "4"], previous)
        previous = scraped["canary", "4"]
        more = _paired(n_canary)  # the log grows by the interval's paired answers
        paired = Paired(
            np.concatenate([paired.canary, more.canary]),
            np.concatenate([paired.champion, more.champion]),
        )
        state = advance(state, run_checks(interval, policy, paired=paired), policy)
        assert state.failed == 0, state.reason
    return state


def test_sensor_loop_over_real_scrapes_promotes_a_healthy_canary():
    assert _release(App(), 5000).phase == Phase.PROMOTE


def test_low_traffic_holds_until_enough_paired_predictions_accumulate():
    state = _release(App(), 600)  # 30 canary answers per interval at 5 %: two intervals for 50
    assert state.phase == Phase.PROMOTE


def test_bake_holds_the_step_before_100_until_labels_judge():
    policy = CanaryPolicy(wait_for_labels=True, bake_analyses=3)
    state = CanaryState("4", step=2)
    state = advance(state, _results(online_mae_ratio=Status.INCONCLUSIVE), policy)
    assert (state.step, state.inconclusive) == (2, 0) and "waiting for labels" in state.reason
    state = advance(state, _results(), policy)  # labels passed; a third bake analysis is due
    assert state.step == 2 and "baking at 50 %" in state.reason
    state = advance(state, _results(), policy)
    assert state.step == 3 and state.weight(policy) == 100


# --- online MAE from the prediction log ---------------------------------------------------------


def test_online_mae_joins_on_entity_and_day():
    predictions = pd.DataFrame(
        {
            "store_id": [1, 1, 2, 2, 1],
            "prediction_for": ["2024-03-02"] * 4 + ["2024-03-09"],
            "variant": ["champion", "canary", "champion", "canary", "canary"],
            "model_version": [3, 4, 3, 4, 4],
            "prediction": [10.0, 13.0, 20.0, 18.0, 99.0],
        }
    )
    labels = pd.DataFrame(
        {
            "store_id": [1, 2],
            "date": pd.to_datetime(["2024-03-02", "2024-03-02"]),
            "sales": [12, 20],
        }
    )
    table = online_mae(predictions, labels, ["store_id"], "sales")
    assert table.to_dict("records") == [
        {"variant": "canary", "model_version": "4", "mae": 1.5, "n": 2},
        {"variant": "champion", "model_version": "3", "mae": 1.0, "n": 2},
    ]
    assert mae_for(table, "4", "3") == OnlineMae(1.5, 1.0, 2, 2)
    assert mae_for(table, "5", "3") == OnlineMae(None, 1.0, 0, 2)

    string_dates = labels.assign(date=["2024-03-02", "2024-03-02"])
    assert online_mae(predictions, string_dates, ["store_id"], "sales").equals(table)


def test_online_mae_without_overlap_is_empty_and_inconclusive():
    predictions = pd.DataFrame(
        {
            "store_id": [1],
            "prediction_for": ["2024-03-02"],
            "variant": ["canary"],
            "model_version": ["4"],
            "prediction": [1.0],
        }
    )
    labels = pd.DataFrame({"store_id": [1], "date": ["2024-03-01"], "sales": [1.0]})
    table = online_mae(predictions, labels, ["store_id"], "sales")
    assert table.empty and list(table.columns) == ["variant", "model_version", "mae", "n"]
    mae = mae_for(table, "4", "3")
    assert mae == OnlineMae(None, None, 0, 0)
    check = _by_name(run_checks(_stats(400), POLICY, mae))["online_mae_ratio"]
    assert check.status == Status.INCONCLUSIVE
    with pytest.raises(ValueError, match=r"labels lack columns \['sales'\]"):
        online_mae(predictions, labels.drop(columns="sales"), ["store_id"], "sales")


def test_online_loss_compares_canary_and_shadow_champion_on_the_same_requests():
    log = pd.DataFrame(
        {
            "store_id": [1, 2, 3, 1],
            "prediction_for": ["2024-03-02"] * 4,
            "variant": ["canary", "canary", "champion", "canary"],
            "model_version": [4, 4, 3, 5],
            "prediction": [12.0, 21.0, 50.0, 0.0],
            "shadow_prediction": [10.0, 20.0, np.nan, 1.0],
            "time": ["2024-03-01T00:00:00"] * 4,
        }
    )
    labels = pd.DataFrame(
        {"store_id": [1, 2, 3], "date": ["2024-03-02"] * 3, "sales": [12.0, 20.0, 30.0]}
    )
    paired = paired_predictions(log, "4")
    assert paired.canary.tolist() == [12.0, 21.0] and paired.champion.tolist() == [10.0, 20.0]
    # store 3's champion answer (another entity) never enters: like is judged against like
    assert paired_online_loss(log, labels, ["store_id"], "sales", "4") == OnlineMae(0.5, 1.0, 2, 2)
    assert paired_online_loss(
        log.drop(columns="shadow_prediction"), labels, ["store_id"], "sales", "4"
    ) == OnlineMae(None, None, 0, 0)


def test_the_spec_is_the_policy_built_in_one_place(spec):
    """Every CanarySpec setting reaches the policy, and the defaults of both agree."""
    from ml_platform.release import policy_for
    from ml_platform.specs import CanarySpec

    default = spec.model_copy(
        update={"deployment": spec.deployment.model_copy(update={"canary": CanarySpec()})}
    )
    assert policy_for(default) == CanaryPolicy()
    tuned = CanarySpec(step_weights=[10, 100], interval_seconds=30, bake_seconds=61)
    custom = default.model_copy(
        update={"deployment": default.deployment.model_copy(update={"canary": tuned})}
    )
    policy = policy_for(custom, offline_shift=0.2)
    assert policy.step_weights == (10, 100) and policy.bake_analyses == 3
    assert policy.offline_shift == 0.2
    with pytest.raises(ValueError, match="to 100"):
        CanarySpec(step_weights=[5, 50])
