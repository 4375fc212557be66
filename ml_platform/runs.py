"""Materialise a pipeline's stages as Dagster runs, the way the UI and the sensors would.

`ml-platform materialize` (what `dvc repro` stages call) and `ml-platform demo` both run through
here, so neither command imports the other.
"""

from __future__ import annotations

import time
from pathlib import Path

from ml_platform.instance import ensure_dagster_home
from ml_platform.names import PARTITION_TAG, RANGE_END, RANGE_START
from ml_platform.settings import executor_name, max_partitions_per_run

QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def landing_range(directory: Path) -> tuple[str, str] | None:
    """(first, last) landing day, or None when there are no landing files."""
    days = landing_days(directory)
    return (days[0], days[-1]) if days else None


def materialize(root: Path, spec, stages: list[str], partition: str | None = None) -> bool:
    """Run the stages' assets as one run: all landing days for daily assets, else unpartitioned."""
    ensure_dagster_home(root)

    from ml_platform.assemble import build_definitions
    from ml_platform.names import INGEST_STAGES, TRAINING_STAGES, ingest_job_name, training_job_name
    from ml_platform.resources.keys import asset_key

    unknown = [s for s in stages if s not in (*INGEST_STAGES, *TRAINING_STAGES)]
    if unknown:
        raise ValueError(f"unknown stages {unknown} for pipeline {spec.name}")
    daily = [s for s in stages if s in INGEST_STAGES]
    if daily and len(daily) != len(stages):
        raise ValueError("daily and unpartitioned stages go in separate runs")
    defs = build_definitions(root, specs=[spec])  # this pipeline only: others cannot break it
    job = defs.resolve_job_def(ingest_job_name(spec) if daily else training_job_name(spec))
    if executor_name() != "in_process":  # steps run in other processes: they rebuild the job
        job = _reconstructable(root, spec, job.name)
    selection = [asset_key(spec, s) for s in stages]
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
            tags[PARTITION_TAG] = partition
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


def record_in_dvc(root: Path, label: str, pipelines: list[str] | None = None) -> None:
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
