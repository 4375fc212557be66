"""The promotion gate: promote a challenger only on a significant, material improvement.

Both comparisons (against the naive baseline and against the champion) are paired on the same
holdout rows, so day-to-day noise that hits both models cancels out. The paired values are per-row
losses: absolute errors for regression, log loss of the predicted probability for classification
(a one-sided Wilcoxon signed-rank test suits both: it needs no normality, only paired rows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Comparison:
    """Challenger against one reference on the same rows."""

    reference: str
    loss_challenger: float
    loss_reference: float
    relative_improvement: float
    p_value: float
    effect_size: float  # matched-pairs rank-biserial correlation, in [-1, 1]
    n_pairs: int
    passed: bool


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    against_baseline: Comparison
    against_champion: Comparison | None

    def as_tags(self) -> dict[str, str]:
        """Flat string tags for MLflow, so the evidence travels with the model version."""
        tags = {"promotion.decision": "promoted" if self.promote else "rejected"}
        tags["promotion.reason"] = self.reason
        for comparison in filter(None, [self.against_baseline, self.against_champion]):
            for key, value in asdict(comparison).items():
                if key != "reference":
                    tags[f"promotion.vs_{comparison.reference}.{key}"] = f"{value}"
        return tags


def paired_test(
    errors_challenger: np.ndarray,
    errors_reference: np.ndarray,
    method: Literal["wilcoxon", "bootstrap"] = "wilcoxon",
    seed: int = 0,
) -> tuple[float, float]:
    """One-sided p-value that the challenger's per-row losses (or absolute errors) are smaller,
    and the effect size."""
    a = np.abs(np.asarray(errors_challenger, dtype="float64"))
    b = np.abs(np.asarray(errors_reference, dtype="float64"))
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired test needs two non-empty error arrays of the same length")
    diff = b - a  # positive where the challenger is better
    nonzero = diff[diff != 0]
    if nonzero.size == 0:
        return 1.0, 0.0
    ranks = stats.rankdata(np.abs(nonzero))
    effect = float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / ranks.sum())
    if method == "wilcoxon":
        p_value = stats.wilcoxon(nonzero, alternative="greater", method="approx").pvalue
    else:
        rng = np.random.default_rng(seed)
        means = np.array([diff[rng.integers(0, diff.size, diff.size)].mean() for _ in range(2000)])
        p_value = float((np.sum(means <= 0) + 1) / (means.size + 1))
    return float(p_value), effect


def compare(
    reference: str,
    errors_challenger: np.ndarray,
    errors_reference: np.ndarray,
    alpha: float,
    min_relative_improvement: float,
    method: Literal["wilcoxon", "bootstrap"] = "wilcoxon",
) -> Comparison:
    loss_c = float(np.mean(np.abs(errors_challenger)))
    loss_r = float(np.mean(np.abs(errors_reference)))
    improvement = (loss_r - loss_c) / loss_r if loss_r > 0 else 0.0
    p_value, effect = paired_test(errors_challenger, errors_reference, method)
    passed = p_value < alpha and improvement >= min_relative_improvement
    return Comparison(
        reference, loss_c, loss_r, improvement, p_value, effect, len(errors_reference), passed
    )


def decide(
    errors_challenger: np.ndarray,
    errors_baseline: np.ndarray,
    errors_champion: np.ndarray | None,
    alpha: float,
    min_relative_improvement: float,
    method: Literal["wilcoxon", "bootstrap"] = "wilcoxon",
    loss_name: str = "mae",
) -> Decision:
    """Apply the gate: beat the baseline always, and the champion when there is one."""
    vs_baseline = compare(
        "baseline", errors_challenger, errors_baseline, alpha, min_relative_improvement, method
    )
    vs_champion = None
    if errors_champion is not None:
        vs_champion = compare(
            "champion", errors_challenger, errors_champion, alpha, min_relative_improvement, method
        )
    failed = [c for c in (vs_baseline, vs_champion) if c is not None and not c.passed]
    if not failed:
        what = "baseline and champion" if vs_champion else "baseline (first champion)"
        return Decision(True, f"significantly better than the {what}", vs_baseline, vs_champion)
    reasons = [
        f"vs {c.reference}: {loss_name} {c.loss_challenger:.4g} vs {c.loss_reference:.4g} "
        f"({c.relative_improvement:+.1%}, need >= {min_relative_improvement:.1%}), "
        f"p={c.p_value:.3g} (need < {alpha})"
        for c in failed
    ]
    return Decision(False, "not promoted: " + "; ".join(reasons), vs_baseline, vs_champion)
