"""Benchmark: what a code location costs to load, per pipeline and for all pipelines at once.

    python bench/code_locations.py [--repeats 3]

Each measurement is a whole fresh interpreter, as Dagster starts a code server or a run worker:
- baseline: `import dagster, sklearn, mlflow` (the libraries every location pays for anyway);
- all pipelines: `import ml_platform.definitions` (one location holding every spec);
- one pipeline: `ml_platform.locations.<name>` (what workspace.yaml loads, per spec);
- `ml-platform spec validate` (every spec, with the tiny fit that audits skops types).
Prints the median wall time and peak RSS of each, and each ratio against the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process, from its own rusage (wait4)."""
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{command} failed: {child.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    python = sys.executable
    specs = sorted(p.stem for p in (ROOT / "ml_platform" / "pipelines").glob("*.yaml"))
    cases = {
        "baseline: import dagster, sklearn, mlflow": [
            python,
            "-c",
            "import dagster, sklearn, mlflow",
        ],
        f"all {len(specs)} pipelines: import ml_platform.definitions": [
            python,
            "-c",
            "import ml_platform.definitions",
        ],
        **{
            f"one pipeline: ml_platform.locations.{name}": [
                python,
                "-c",
                f"import ml_platform.locations as l; l.{name}",
            ]
            for name in specs
        },
        "ml-platform spec validate": [
            str(Path(python).with_name("ml-platform")),
            "spec",
            "validate",
        ],
    }
    results = {}
    for label, command in cases.items():
        runs = [_measure(command) for _ in range(args.repeats)]
        results[label] = (statistics.median(r[0] for r in runs), max(r[1] for r in runs))
        print(f"  measured {label}", flush=True)
    base_wall = next(iter(results.values()))[0]
    print(f"\n{'case':62} {'wall s':>7} {'x base':>7} {'peak MB':>8}")
    for label, (wall, peak) in results.items():
        print(f"{label:62} {wall:7.2f} {wall / base_wall:7.2f} {peak:8.0f}")


if __name__ == "__main__":
    main()
