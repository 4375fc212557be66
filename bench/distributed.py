"""A long ingest backfill on Dagster's Celery executor: 1 worker against 2, and the multiprocess
executor as the one-machine baseline, side by side in one run.

    .venv/bin/python bench/distributed.py [--stores 40] [--days 730] [--batch 92]

The landing files are generated once and copied into one fresh project root per configuration,
each with its own PostgreSQL database (the production instance, `deploy/dagster.postgres.yaml`)
and, for Celery, its own RabbitMQ queue. What is timed is the whole command a user runs:

    ML_PLATFORM_EXECUTOR=… ML_PLATFORM_MAX_PARTITIONS_PER_RUN=<batch> \\
        ml-platform materialize sales_forecast raw validated quarantine features

The workers are started (and wait until ready) before the clock starts; their start-up is
printed separately. Every configuration must write the same parquet bytes (md5 over all files),
or the run is reported as invalid. Needs the services of the production profile on 127.0.0.1.
Issue 14's aim: at least 1.6x from the second worker on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
STAGES = ["raw", "validated", "quarantine", "features"]


def generate(root: Path, stores: int, days: int) -> None:
    from ml_platform.core.datagen import GeneratorConfig, write_landing_files
    from ml_platform.specs import SPEC_DIR, load_spec

    spec = load_spec(SPEC_DIR / "sales_forecast.yaml", REPO_ROOT)
    config = GeneratorConfig(
        stores=stores,
        days=days,
        start=spec.landing.start_date,
        holidays=tuple(spec.features.holidays),
        seed=7,
    )
    write_landing_files(config, root / spec.landing.directory, append=False)


def data_md5(root: Path) -> tuple[int, str]:
    files = sorted((root / "data").rglob("*.parquet"))
    digest = hashlib.md5()
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(hashlib.md5(path.read_bytes()).digest())
    return len(files), digest.hexdigest()


def run_config(template: Path, work: Path, label: str, executor: str, workers: int, batch: int):
    """One configuration from a fresh copy of the landing files; returns (seconds, md5 info)."""
    from ml_platform.production import (
        apply_env,
        create_database,
        delete_celery_queue,
        drop_database,
        postgres_instance_env,
        restore_env,
        start_celery_workers,
        write_postgres_instance,
    )

    root = work / label
    shutil.copytree(template, root)
    tag = f"mlp_bench_{uuid.uuid4().hex[:8]}"
    create_database(tag)
    home = write_postgres_instance(root / ".ml_platform" / "dagster_home")
    env = {
        **postgres_instance_env(tag),
        "DAGSTER_HOME": str(home),
        "ML_PLATFORM_ROOT": str(root),
        "ML_PLATFORM_EXECUTOR": executor,
        "ML_PLATFORM_CELERY_QUEUE": tag,
        "ML_PLATFORM_MAX_PARTITIONS_PER_RUN": str(batch),
    }
    saved = apply_env(env)
    started = []
    try:
        if executor == "celery":
            clock = time.perf_counter()
            started = start_celery_workers(workers, tag, root / "logs", prefix="bench")
            print(f"  {label}: {workers} worker(s) ready in {time.perf_counter() - clock:.1f}s")
        command = [
            str(Path(sys.executable).parent / "ml-platform"),
            "materialize",
            "sales_forecast",
            *STAGES,
        ]
        clock = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its run processes are ended with it if the bench stops
        )
        try:
            stdout, stderr = process.communicate()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        seconds = time.perf_counter() - clock
        if done.returncode != 0:
            raise SystemExit(f"{label} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        runs = done.stdout.count(" succeeded in ")
        files, md5 = data_md5(root)
        print(f"  {label}: {seconds:.1f}s, {runs} runs, {files} parquet files, md5 {md5[:12]}")
        return seconds, (files, md5)
    finally:
        for service in started:
            service.stop()
        if executor == "celery":
            delete_celery_queue(tag)
        restore_env(saved)
        drop_database(tag)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=40)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--batch", type=int, default=92, help="days per run (multi-run backfill)")
    args = parser.parse_args(argv)
    # `timeout` or Ctrl-C: still stop the workers, drop the databases and remove the folders
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from ml_platform.settings import use_passive_openmp

    use_passive_openmp()
    work = Path(tempfile.mkdtemp(prefix="mlp_bench_distributed_"))
    try:
        template = work / "template"
        template.mkdir()
        shutil.copy(REPO_ROOT / "params.yaml", template / "params.yaml")
        clock = time.perf_counter()
        generate(template, args.stores, args.days)
        print(
            f"{args.stores} stores x {args.days} days generated in "
            f"{time.perf_counter() - clock:.1f}s; runs of {args.batch} days; "
            f"{os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}"
        )
        configs = [
            ("multiprocess", "multiprocess", 0),
            ("celery-1-worker", "celery", 1),
            ("celery-2-workers", "celery", 2),
        ]
        results = {
            label: run_config(template, work, label, executor, workers, args.batch)
            for label, executor, workers in configs
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    outputs = {output for _, output in results.values()}
    seconds = {label: s for label, (s, _) in results.items()}
    print()
    print(f"{'configuration':<20}{'seconds':>10}{'vs 1 worker':>14}")
    for label, value in seconds.items():
        print(f"{label:<20}{value:>10.1f}{seconds['celery-1-worker'] / value:>13.2f}x")
    speedup = seconds["celery-1-worker"] / seconds["celery-2-workers"]
    print(f"\nsecond worker: {speedup:.2f}x (aim >= 1.6x on 2 cores)")
    print(
        f"2 workers vs multiprocess: {seconds['multiprocess'] / seconds['celery-2-workers']:.2f}x"
    )
    if len(outputs) != 1:
        print(f"INVALID: the configurations wrote different data: {sorted(outputs)}")
        return 1
    print("same parquet bytes in every configuration")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
