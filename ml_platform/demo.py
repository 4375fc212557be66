"""`ml-platform demo`: generate data, materialise the whole graph, print what happened.

It runs the same jobs the UI and sensors run, against the persistent instance, so every run
shows up in the Dagster UI afterwards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ml_platform.instance import ensure_dagster_home
from ml_platform.layout import StateLayout
from ml_platform.names import TRAINING_STAGES
from ml_platform.runs import (  # noqa: F401  QUIET, RANGE_*: bench/pipeline.py imports them here
    QUIET,
    RANGE_END,
    RANGE_START,
    landing_days,
    landing_range,
    materialize,
    record_in_dvc,
)
from ml_platform.settings import executor_name, max_partitions_per_run


def run_demo(root: Path, pipelines: list[str] | str | None = None, regenerate: bool = False) -> int:
    """For each pipeline: generate data if there is none, then ingest → train → predict → drift;
    then record the data in DVC and print one summary per pipeline."""
    ensure_dagster_home(root)
    specs = _specs(root)
    if isinstance(pipelines, str):
        pipelines = [pipelines]
    if pipelines:
        known = {s.name: s for s in specs}
        missing = [p for p in pipelines if p not in known]
        if missing:
            raise ValueError(f"unknown pipelines {missing}; known: {sorted(known)}")
        chosen = [known[p] for p in pipelines]
    else:  # every pipeline that has data, or can make demo data
        chosen = [
            s
            for s in specs
            if s.landing.generator is not None or landing_days(root / s.landing.directory)
        ]
    for spec in chosen:
        print(f"=== {spec.name} ({spec.task}) ===", flush=True)
        if not _demo_pipeline(root, spec, regenerate):
            return 1
    record_in_dvc(root, "[6/6]", [spec.name for spec in chosen])
    import dagster as dg

    for spec in chosen:
        _print_summary(root, spec, dg.DagsterInstance.get())
    return 0


def _demo_pipeline(root: Path, spec, regenerate: bool) -> bool:
    from ml_platform.generate import generate_landing
    from ml_platform.specs import SpecError

    landing = root / spec.landing.directory
    if regenerate or landing_range(landing) is None:
        print(f"[1/6] generating synthetic landing files into {landing}")
        try:
            generate_landing(root, spec)
        except (SpecError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return False
    first, last = landing_range(landing)
    steps = [
        (
            f"[2/6] ingest {first}..{last} (raw → validated → features), {_runs_label()}",
            ["raw", "validated", "quarantine", "features"],
            None,
        ),
        (
            "[3/6] training (training_set → challenger → promotion)",
            list(TRAINING_STAGES),
            None,
        ),
        (f"[4/6] predictions {first}..{last} from the champion", ["predictions"], None),
        (f"[5/6] drift report for {last} against the champion's reference", ["drift_report"], last),
    ]
    for label, stages, partition in steps:
        print(label, flush=True)
        if not materialize(root, spec, stages, partition=partition):
            return False
    return True


def _runs_label() -> str:
    batch = max_partitions_per_run()
    if batch and executor_name() != "in_process":
        return f"in runs of {batch} days that the {executor_name()} workers share"
    return "one run"


def _specs(root: Path):
    """Every valid spec; a broken one is reported and skipped, never stops the others."""
    from ml_platform.settings import spec_dir_from_env
    from ml_platform.specs import load_specs_isolated

    specs, errors = load_specs_isolated(spec_dir_from_env(), root=root)
    for error in errors.values():
        print(f"warning: pipeline left out: {error}", file=sys.stderr)
    return specs


def _print_summary(root: Path, spec, instance) -> None:
    from ml_platform.names import CHAMPION
    from ml_platform.resources.keys import asset_key
    from ml_platform.resources.registry import ModelRegistry
    from ml_platform.settings import mlflow_uri

    registry = ModelRegistry(tracking_uri=mlflow_uri(root), artifact_root="unused")
    champion = registry.alias_version(spec.name, CHAMPION)
    promotion = instance.get_latest_materialization_event(asset_key(spec, "promotion"))
    meta = {k: v.value for k, v in promotion.asset_materialization.metadata.items()}
    quarantined = _quarantined_rows(instance, spec)
    loss = meta.get("loss", "mae")
    baseline = "base rate" if spec.is_classifier else "seasonal-naive"
    print(f"\nSummary: {spec.name} ({spec.task})")
    print(f"  champion:          {spec.name} v{champion.version if champion else '— (none yet)'}")
    print(f"  last decision:     {meta.get('decision')} — {meta.get('reason')}")
    if f"{loss}_challenger" in meta:
        label = {"mae": "MAE", "log_loss": "log loss"}.get(loss, loss)
        print(
            f"  holdout {label}:{' ' * (10 - len(label))}{meta[f'{loss}_challenger']:.3f} vs "
            f"{baseline} {meta[f'{loss}_baseline']:.3f} ({meta['improvement_vs_baseline']:+.1%}, "
            f"p={meta['p_value_vs_baseline']:.2g})"
        )
    if champion is not None and spec.is_classifier:
        tags = champion.tags
        print(
            f"  holdout ROC AUC:   {float(tags.get('holdout_roc_auc', 'nan')):.3f}   "
            f"Brier {float(tags.get('holdout_brier', 'nan')):.4f}   "
            f"accuracy {float(tags.get('holdout_accuracy', 'nan')):.3f}"
        )
    print(f"  rows quarantined:  {quarantined}")
    print("\nWhere to look next")
    print("  make dev            → http://127.0.0.1:3000 (asset lineage, runs, metadata)")
    print(f"  MLflow              → mlflow ui --backend-store-uri {mlflow_uri(root)}")
    print(f"  data products       → {root / 'data' / spec.name}")
    print(f"  audit trail         → {StateLayout(root).audit_log(spec.name)}")
    print(
        json.dumps(
            {"pipeline": spec.name, "champion_version": champion.version if champion else None}
        )
    )


def _quarantined_rows(instance, spec) -> int:
    from ml_platform.resources.keys import asset_key

    records = instance.fetch_materializations(asset_key(spec, "validated"), limit=10_000).records
    seen, total = set(), 0
    for record in records:  # newest first: count each partition once
        materialization = record.asset_materialization
        if materialization.partition in seen:
            continue
        seen.add(materialization.partition)
        value = materialization.metadata.get("rows_quarantined")
        total += int(value.value) if value is not None else 0
    return total
