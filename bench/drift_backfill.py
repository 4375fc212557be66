"""Benchmark: a year of daily drift reports in one go (issue 16, item 2).

    python bench/drift_backfill.py [--root DIR] [--stores 1000] [--days 730]

Without `--root` it builds a fresh demo root in a temporary folder: `ml-platform generate`, then
`ml-platform demo` (ingest, train, promote, predict). Then, on that root:

1. the user's command, timed as a whole process: `ml-platform materialize sales_forecast
   drift_report` (every landing day, one range run under the single-run backfill policy);
2. in process, on the same features, predictions and champion reference: `daily_drift` over all
   days (reference prepared once, each window a slice) against the baseline, one independent
   `compute_drift` + `realised_losses` per day (what every day cost before), same day list.

Target: 730 daily reports in <= 30 s at 1,000 stores (the whole process).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ML_PLATFORM = Path(sys.executable).with_name("ml-platform")
PIPELINE = "sales_forecast"
TARGET_SECONDS = 30.0


def run(cmd: list[str], root: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one child process.

    CPU seconds are what to compare on a busy machine, where wall time mostly measures the queue.
    """
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            sys.exit(f"{' '.join(cmd)} failed:\n{err.read().decode()[-3000:]}")
    return seconds, usage.ru_utime + usage.ru_stime


def build_root(root: Path, stores: int, days: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    generate = [str(ML_PLATFORM), "generate", "--pipeline", PIPELINE, "--stores", str(stores)]
    run([*generate, "--days", str(days)], root)
    run([str(ML_PLATFORM), "demo", "--pipeline", PIPELINE], root)


def in_process(root: Path, every: int) -> tuple[float, float, int]:
    """Seconds for `daily_drift` over every day and for the per-day baseline, and the day count."""
    os.chdir(root)
    os.environ["ML_PLATFORM_ROOT"] = str(root)
    import pandas as pd

    from ml_platform.assets.modeling import HOLDOUT_LOSS_TAG
    from ml_platform.cli import _spec
    from ml_platform.core import training
    from ml_platform.core.drift import compute_drift
    from ml_platform.core.drift_days import daily_drift, drift_columns, thresholds_for, window_of
    from ml_platform.core.storage import read_frames
    from ml_platform.resources.registry import CHAMPION, ModelRegistry
    from ml_platform.settings import mlflow_artifact_root, mlflow_uri

    spec = _spec(PIPELINE, root)
    uri, artifacts = mlflow_uri(root), mlflow_artifact_root(root)
    registry = ModelRegistry(tracking_uri=uri, artifact_root=artifacts)
    version = registry.alias_version(spec.name, CHAMPION)
    reference = registry.load_reference(spec.name, version)
    data = root / "data" / spec.name
    features = read_frames(sorted((data / "features").glob("*.parquet")))
    predictions = read_frames(sorted((data / "predictions").glob("*.parquet")))
    days = sorted(date.fromisoformat(p.stem) for p in (data / "features").glob("*.parquet"))
    holdout = float(version.tags.get(HOLDOUT_LOSS_TAG, version.tags.get("holdout_mae")))

    start = time.process_time()
    daily_drift(
        reference,
        features,
        predictions,
        days,
        spec=spec,
        model_version=int(version.version),
        holdout_loss=holdout,
    )
    shared = time.process_time() - start

    columns, thresholds = drift_columns(spec), thresholds_for(spec)
    sample = days[::every]  # the baseline is slow: time every `every`-th day and scale up
    start = time.process_time()
    for day in sample:  # the old asset body: every window alone
        window = window_of(features, spec, day)
        compute_drift(reference, window, columns=columns, thresholds=thresholds)
        first = pd.Timestamp(day - timedelta(days=spec.drift.window_days - 1))
        made = predictions[(predictions[spec.timestamp] >= first)]
        made = made[made[spec.timestamp] <= pd.Timestamp(day)]
        training.realised_losses(made, window, spec, int(version.version))
    alone = (time.process_time() - start) * len(days) / len(sample)
    return shared, alone, len(days)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="an existing demo root (skips building one)")
    parser.add_argument("--stores", type=int, default=1000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--keep", action="store_true", help="keep the temporary root")
    parser.add_argument(
        "--baseline-every", type=int, default=10, help="time the per-day baseline on every Nth day"
    )
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    root = args.root or Path(tempfile.mkdtemp(prefix="drift_backfill_"))
    try:
        if args.root is None:
            started = time.perf_counter()
            build_root(root, args.stores, args.days)
            print(f"built the demo root in {time.perf_counter() - started:.0f} s: {root}")
        command = [str(ML_PLATFORM), "materialize", PIPELINE, "drift_report"]
        whole, cpu = run(command, root)
        shared, alone, days = in_process(root, args.baseline_every)
    finally:
        if args.root is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{days} daily drift reports, {root}")
    print(f"  `{' '.join(command[1:])}` whole process: {whole:8.1f} s ({cpu:.1f} s CPU)")
    print(f"  in process, daily_drift (shared work):          {shared:8.2f} s CPU")
    print(
        f"  in process, one compute_drift per day (before): {alone:8.2f} s CPU "
        f"(every {args.baseline_every}th day timed, scaled to all)"
    )
    print(f"  shared work is {alone / shared:.1f}x faster than a comparison per day")
    met = "met" if whole <= TARGET_SECONDS else "NOT met"
    print(f"\ntarget {days} reports <= {TARGET_SECONDS:.0f} s as a whole process: {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
