"""The promotion gate decides on paired evidence, never on luck."""

from __future__ import annotations

import numpy as np
import pytest

from ml_platform.core.promotion import decide, paired_test

rng = np.random.default_rng(42)
ACTUAL_NOISE = rng.normal(0, 10, 2000)


def test_clearly_better_challenger_is_promoted():
    baseline = ACTUAL_NOISE * 1.5
    decision = decide(ACTUAL_NOISE, baseline, None, alpha=0.05, min_relative_improvement=0.01)
    assert decision.promote
    assert decision.against_baseline.p_value < 1e-6
    assert decision.against_baseline.effect_size > 0.3
    assert decision.as_tags()["promotion.decision"] == "promoted"


def test_equal_models_are_not_promoted():
    twin = ACTUAL_NOISE + rng.normal(0, 0.01, ACTUAL_NOISE.size)
    decision = decide(ACTUAL_NOISE, ACTUAL_NOISE * 2, twin, 0.05, 0.01)
    assert not decision.promote
    assert "vs champion" in decision.reason
    assert "vs baseline" not in decision.reason


def test_tiny_but_significant_gain_needs_the_minimum_improvement():
    champion = ACTUAL_NOISE * 1.003  # 0.3 % worse on every row: significant, not material
    decision = decide(ACTUAL_NOISE, ACTUAL_NOISE * 2, champion, 0.05, 0.01)
    assert decision.against_champion.p_value < 0.05
    assert not decision.promote


def test_first_model_must_beat_the_baseline():
    worse = ACTUAL_NOISE * 1.2
    decision = decide(worse, ACTUAL_NOISE, None, 0.05, 0.01)
    assert not decision.promote and "vs baseline" in decision.reason


@pytest.mark.parametrize("method", ["wilcoxon", "bootstrap"])
def test_paired_test_is_one_sided(method):
    p_better, effect_better = paired_test(ACTUAL_NOISE, ACTUAL_NOISE * 1.3, method)
    p_worse, effect_worse = paired_test(ACTUAL_NOISE * 1.3, ACTUAL_NOISE, method)
    assert p_better < 0.01 < 0.99 < p_worse
    assert effect_better > 0 > effect_worse


def test_identical_errors_give_p_one():
    assert paired_test(ACTUAL_NOISE, ACTUAL_NOISE) == (1.0, 0.0)


def test_mismatched_inputs_are_rejected():
    with pytest.raises(ValueError, match="same length"):
        paired_test(np.ones(3), np.ones(4))
