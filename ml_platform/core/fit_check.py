"""The exact model check behind `ml-platform spec validate`: fit the spec's pipeline on a few
synthetic rows and audit it as skops will load it. Too slow for every process, so it is not part
of loading a spec (`spec_checks` checks what it can without fitting)."""

from __future__ import annotations

from ml_platform.core.training import make_estimator, model_input, trusted_types
from ml_platform.spec_checks import SpecCheckError, missing_types_message
from ml_platform.specs import PipelineSpec


def check_by_fitting(spec: PipelineSpec) -> None:
    """Fit the spec's whole pipeline on a few synthetic rows and audit it as skops will: the
    exact check behind `ml-platform spec validate` (too slow to run in every process)."""
    import numpy as np
    import pandas as pd
    import skops.io

    rows = 48
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            column: (
                rng.choice(["a", "b", "c"], rows)
                if column in spec.features.categorical
                else np.where(rng.random(rows) < 0.1, np.nan, rng.normal(size=rows))
            )
            for column in spec.feature_columns
        }
    )
    labels = np.arange(rows) % 2 if spec.is_classifier else rng.normal(size=rows)
    model = make_estimator(spec)
    try:
        model.fit(model_input(frame, spec), labels)
    except (ValueError, TypeError) as exc:
        raise SpecCheckError(f"model: fitting {spec.model.estimator} failed: {exc}") from None
    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    missing = sorted(set(untrusted) - set(trusted_types(spec)))
    if missing:
        raise SpecCheckError(
            missing_types_message(spec.model.estimator.rpartition(".")[2], missing)
        )
