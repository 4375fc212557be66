"""`ml-platform demo`: generate data, materialise the whole graph, print what happened.

It runs the same jobs the UI and sensors run, against the persistent instance, so every run
shows up in the Dagster UI afterwards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ml_platform.instance import ensure_dagster_home
from ml_platform.settings import executor_name, max_partitions_per_run

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def landing_range(directory: Path) -> tuple[str, str] | None:
    """(first, last) landing day, or None when there are no landing files."""
    days = landing_days(directory)
    return (days[0], days[-1]) if days else None


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
    _record_in_dvc(root, "[6/6]", [spec.name for spec in chosen])
    import dagster as dg

    for spec in chosen:
        _print_summary(root, spec, dg.DagsterInstance.get())
    return 0


def _demo_pipeline(root: Path, spec, regenerate: bool) -> bool:
    from ml_platform.cli import main as cli_main

    landing = root / spec.landing.directory
    if regenerate or landing_range(landing) is None:
        print(f"[1/6] generating synthetic landing files into {landing}")
        if cli_main(["generate", "--pipeline", spec.name]) != 0:
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
            ["training_set", "challenger", "promotion"],
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


def materialize(root: Path, spec, stages: list[str], partition: str | None = None) -> bool:
    """Run the stages' assets as one run: all landing days for daily assets, else unpartitioned."""
    ensure_dagster_home(root)
    import dagster as dg

    from ml_platform.assemble import build_definitions
    from ml_platform.automation.jobs import INGEST_STAGES, ingest_job_name, training_job_name

    unknown = [
        s for s in stages if s not in (*INGEST_STAGES, "training_set", "challenger", "promotion")
    ]
    if unknown:
        raise ValueError(f"unknown stages {unknown} for pipeline {spec.name}")
    daily = [s for s in stages if s in INGEST_STAGES]
    if daily and len(daily) != len(stages):
        raise ValueError("daily and unpartitioned stages go in separate runs")
    defs = build_definitions(root, specs=[spec])  # this pipeline only: others cannot break it
    job = defs.resolve_job_def(ingest_job_name(spec) if daily else training_job_name(spec))
    if executor_name() != "in_process":  # steps run in other processes: they rebuild the job
        job = _reconstructable(root, spec, job.name)
    selection = [dg.AssetKey([spec.name, s]) for s in stages]
    if not daily or partition is not None:
        return _run(job, selection, partition=partition if daily else None).success
    days = landing_days(root / spec.landing.directory)
    if not days:
        raise ValueError(f"no landing files in {root / spec.landing.directory}")
    batch = max_partitions_per_run()
    if batch and executor_name() != "in_process":
        return _materialize_in_batches(job, spec, stages, days, batch)
    # A backfill survives bad days: a range run that names broken days is split into the
    # consecutive good days around them, as few range runs as possible; each day fails once.
    broken: set[str] = set()
    pending, ok = [(days[0], days[-1])], True
    while pending:
        span = pending.pop(0)
        result = _run(job, selection, days=span)
        if result.success:
            continue
        new = set(broken_partitions(result)) - broken
        if not new:  # a failure that names no day: nothing to route around
            ok = False
            continue
        broken |= new
        rest = [d for d in days if span[0] <= d <= span[1] and d not in broken]
        pending.extend(contiguous_spans(rest))
    if broken:
        print(
            f"      summary: {len(days) - len(broken)} of {len(days)} days ingested; "
            f"{len(broken)} failed: {', '.join(sorted(broken)[:20])}"
            f"{' …' if len(broken) > 20 else ''}",
            flush=True,
        )
    return ok and not broken


# Stages in the order a distributed backfill runs them: each wave's runs start once the previous
# wave is done, because a stage reads earlier days of the one before it (lags, drift windows);
# within a wave the batches are independent, so workers take them at the same time.
WAVES = (("raw", "validated", "quarantine"), ("features",), ("predictions",), ("drift_report",))


def _materialize_in_batches(job, spec, stages: list[str], days: list[str], size: int) -> bool:
    """A backfill as runs of at most `size` days (`ML_PLATFORM_MAX_PARTITIONS_PER_RUN`), wave by
    wave, the runs of a wave at once: what `BackfillPolicy.multi_run` asks of the daemon.

    Each run is orchestrated by its own process (Dagster's run logging is not safe across threads
    of one process: two runs started in threads deadlocked on logging's locks).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    batches = [
        (span_days[i], span_days[min(i + size, len(span_days)) - 1])
        for first, last in contiguous_spans(days)
        for span_days in [[d for d in days if first <= d <= last]]
        for i in range(0, len(span_days), size)
    ]
    processes = min(len(batches), MAX_CONCURRENT_RUNS)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        for wave in WAVES:
            chosen = [s for s in wave if s in stages]
            if not chosen:
                continue
            runs = [pool.submit(_run_batch, job, spec.name, chosen, span) for span in batches]
            if not all(run.result() for run in runs):
                return False
    return True


def _run_batch(job, pipeline: str, stages: list[str], days: tuple[str, str]) -> bool:
    import dagster as dg

    return _run(job, [dg.AssetKey([pipeline, s]) for s in stages], days=days).success


MAX_CONCURRENT_RUNS = 4  # run orchestrators at once; each mostly waits on its workers


def _reconstructable(root: Path, spec, job_name: str):
    """The job as workers rebuild it: code location `ml_platform.locations:<pipeline>`."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    repository = ReconstructableRepository.for_module(
        "ml_platform.locations", spec.name, working_directory=str(root)
    )
    return repository.get_reconstructable_job(job_name)


def _run(job, selection, partition: str | None = None, days: tuple[str, str] | None = None):
    import dagster as dg

    from ml_platform.automation.zombies import cli_run_tags

    _fail_dead_runs()
    tags = {RANGE_START: days[0], RANGE_END: days[1]} if days else {}
    tags.update(cli_run_tags())  # so a run this process leaves behind when killed is found dead
    started = time.monotonic()
    if isinstance(job, dg.JobDefinition):
        result = job.execute_in_process(
            partition_key=partition,
            run_config=QUIET,
            instance=dg.DagsterInstance.get(),
            tags=tags,
            asset_selection=selection,
            raise_on_error=False,
        )
    else:  # a reconstructable job: its executor (Celery, multiprocess) runs the steps
        if partition is not None:
            tags["dagster/partition"] = partition
        result = dg.execute_job(
            job,
            instance=dg.DagsterInstance.get(),
            run_config=QUIET,
            tags=tags,
            asset_selection=selection,
            raise_on_error=False,
        )
    outcome = "succeeded" if result.success else "FAILED"
    span = f" {days[0]}..{days[1]}" if days else ""
    elapsed = time.monotonic() - started
    print(f"      run {result.run_id}{span} {outcome} in {elapsed:.1f}s", flush=True)
    if not result.success:
        _print_failure(result)
        _alert(result)
    return result


def _fail_dead_runs() -> None:
    """Before a CLI run starts: fail runs whose process died (`automation/zombies.py`), so none
    stays STARTED, and each gets its alert, even where no daemon runs."""
    import logging

    import dagster as dg

    from ml_platform.automation.zombies import fail_dead_runs
    from ml_platform.settings import default_root

    for run_id in fail_dead_runs(
        dg.DagsterInstance.get(), default_root(), logging.getLogger("ml_platform")
    ):
        print(f"      run {run_id} had died (its process is gone): marked FAILED, alert written")


def landing_days(directory: Path) -> list[str]:
    """Every `YYYY-MM-DD.csv` day in the landing folder, oldest first."""
    from datetime import date

    days = []
    for path in directory.glob("????-??-??.csv"):
        try:
            days.append(date.fromisoformat(path.stem).isoformat())
        except ValueError:
            continue
    return sorted(days)


def broken_partitions(result) -> list[str]:
    """The days a failed ingest run named as broken (raw or contract failures)."""
    broken: set[str] = set()
    for event in result.all_events:
        if not (event.is_step_failure and event.step_failure_data):
            continue
        user = event.step_failure_data.user_failure_data
        value = user.metadata.get("broken_partitions") if user else None
        if value is not None:
            broken.update(k for k in str(value.value).split(", ") if k)
    return sorted(broken)


def contiguous_spans(days: list[str]) -> list[tuple[str, str]]:
    """[first, last] of each run of consecutive calendar days."""
    from datetime import date, timedelta

    spans: list[tuple[str, str]] = []
    for day in days:
        if spans and date.fromisoformat(spans[-1][1]) + timedelta(days=1) == date.fromisoformat(
            day
        ):
            spans[-1] = (spans[-1][0], day)
        else:
            spans.append((day, day))
    return spans


def _record_in_dvc(root: Path, label: str, pipelines: list[str] | None = None) -> None:
    from ml_platform.resources.dvc import DvcError, DvcLedger

    ledger = DvcLedger(root)
    if not ledger.enabled:
        print(f"{label} DVC not initialised here (no .dvc/ and dvc.yaml): data not recorded")
        return
    print(f"{label} recording data versions in DVC (dvc commit + push)", flush=True)
    try:
        ledger.record(pipelines)
    except DvcError as exc:
        print(f"      warning: {exc}")


def _specs(root: Path):
    """Every valid spec; a broken one is reported and skipped, never stops the others."""
    import sys

    from ml_platform.settings import spec_dir_from_env
    from ml_platform.specs import load_specs_isolated

    specs, errors = load_specs_isolated(spec_dir_from_env(), root=root)
    for error in errors.values():
        print(f"warning: pipeline left out: {error}", file=sys.stderr)
    return specs


def _step_failures(result) -> list[tuple[str, str]]:
    """(step, message with its causes) for each failed step: a wrapper such as "Error occurred
    while executing op" says nothing without what it wraps."""
    from ml_platform.core.secrets import redact

    failures = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data:
            error, lines = event.step_failure_data.error, []
            while error is not None and len(lines) < 5:
                lines.append(error.message.strip())
                error = error.cause
            text = "\n        caused by: ".join(lines)
            failures.append((event.step_key or "run", redact(text)))
    return failures


def _print_failure(result) -> None:
    for step, message in _step_failures(result):
        print(f"      {step}: {message}")


def _alert(result) -> None:
    """The same alert a daemon-launched run gets: one line per run in the alert sink (and the
    webhook), deduplicated by run id, so the failure sensor seeing this run later adds nothing."""
    import logging

    from ml_platform.automation.alerts import StepFailure, deliver_alert, run_failure_alert
    from ml_platform.settings import default_root

    alert = run_failure_alert(
        job_name=result.dagster_run.job_name,
        run_id=result.run_id,
        step_failures=[StepFailure(step, message) for step, message in _step_failures(result)],
        run_failure_message=None,
        timestamp=time.time(),
    )
    deliver_alert(alert, default_root(), logging.getLogger("ml_platform"))


def _print_summary(root: Path, spec, instance) -> None:
    import dagster as dg

    from ml_platform.resources.registry import CHAMPION, ModelRegistry
    from ml_platform.settings import mlflow_uri

    registry = ModelRegistry(tracking_uri=mlflow_uri(root), artifact_root="unused")
    champion = registry.alias_version(spec.name, CHAMPION)
    promotion = instance.get_latest_materialization_event(dg.AssetKey([spec.name, "promotion"]))
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
    print(f"  audit trail         → {root / '.ml_platform' / 'audit' / (spec.name + '.jsonl')}")
    print(
        json.dumps(
            {"pipeline": spec.name, "champion_version": champion.version if champion else None}
        )
    )


def _quarantined_rows(instance, spec) -> int:
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetKey([spec.name, "validated"]), limit=10_000
    ).records
    seen, total = set(), 0
    for record in records:  # newest first: count each partition once
        materialization = record.asset_materialization
        if materialization.partition in seen:
            continue
        seen.add(materialization.partition)
        value = materialization.metadata.get("rows_quarantined")
        total += int(value.value) if value is not None else 0
    return total
