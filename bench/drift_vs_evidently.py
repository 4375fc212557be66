"""Benchmark: our drift against Evidently's DataDriftPreset on the same data.

    pip install -e '.[bench]'
    python bench/drift_vs_evidently.py [--rows 1000000]

Two measurements, each tool in its own fresh interpreter so wall time and peak RSS belong to one
tool only:

1. Whole processes, what a user waits for: the same parquet files are compared by
   `ml-platform drift REF CUR --format json` and by a script that reads them with pandas and runs
   `DataDriftPreset` (start-up, imports and reading included). The floor is a process that only
   reads both files with pyarrow. Peak RSS is each child's own `ru_maxrss` (`os.wait4`).
2. In process: both children build the same frames from the same seeds (a fingerprint proves it)
   and time only the drift computation.

The data: 15 numeric and 5 categorical columns, with a known shift in 5 numeric and 2 categorical
columns ("shifted"), and a current window drawn like the reference ("control").
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

N_NUMERIC, N_CATEGORICAL = 15, 5
SHIFTED_COLUMNS = ["num_00", "num_01", "num_02", "num_03", "num_04", "cat_0", "cat_1"]
TARGETS = {"speedup": 40.0, "memory_ratio": 0.2, "agreement": 1.0}  # whole processes (issue 16)
ML_PLATFORM = Path(sys.executable).with_name("ml-platform")


def make_window(rows: int, seed: int, shifted: bool) -> pd.DataFrame:
    """One window; `shifted` applies the known shifts to the columns in SHIFTED_COLUMNS."""
    rng = np.random.default_rng(seed)
    s = 1.0 if shifted else 0.0
    numeric = {
        "num_00": lambda: rng.normal(0.5 * s, 1.0, rows),  # mean shift of 0.5 std
        "num_01": lambda: rng.normal(0.0, 1.0 + 0.5 * s, rows),  # scale x1.5
        "num_02": lambda: rng.lognormal(0.3 * s, 0.8, rows),  # skewed, multiplicative shift
        "num_03": lambda: rng.poisson(4.0 + 1.5 * s, rows).astype(np.int64),  # counts
        "num_04": lambda: rng.uniform(0.3 * s, 1.0 + 0.3 * s, rows),  # range moves
        "num_05": lambda: rng.normal(10.0, 3.0, rows),
        "num_06": lambda: rng.exponential(2.0, rows),
        "num_07": lambda: rng.gamma(2.0, 2.0, rows),
        "num_08": lambda: rng.standard_t(5, rows),
        "num_09": lambda: rng.integers(0, 7, rows),  # weekday-like
        "num_10": lambda: rng.binomial(1, 0.3, rows),  # flag
        "num_11": lambda: rng.beta(2.0, 5.0, rows),
        "num_12": lambda: np.where(  # bimodal
            rng.random(rows) < 0.3, rng.normal(-2.0, 0.5, rows), rng.normal(1.0, 1.0, rows)
        ),
        "num_13": lambda: rng.weibull(1.5, rows),
        "num_14": lambda: rng.laplace(0.0, 1.0, rows),
    }
    # Column by column, so building the frame never holds two copies of it: the peak RSS we
    # report should be the tool's, not the generator's.
    frame = pd.DataFrame(index=pd.RangeIndex(rows))
    for name, draw in numeric.items():
        frame[name] = draw()
    mixes = {
        "cat_0": ([0.4, 0.3, 0.2, 0.1], [0.15, 0.25, 0.3, 0.3]),  # mix shift
        "cat_1": ([0.5, 0.3, 0.2, 0.0], [0.35, 0.25, 0.15, 0.25]),  # a new category appears
        "cat_2": ([0.25] * 4, [0.25] * 4),
        "cat_3": ([0.6, 0.2, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1]),
        "cat_4": ([0.1] * 10, [0.1] * 10),
    }
    for name, (before, after) in mixes.items():
        p = np.asarray(after if shifted else before)
        labels = np.array([f"{name}_{i}" for i in range(p.size)], dtype=object)
        frame[name] = labels[rng.choice(p.size, size=rows, p=p / p.sum())]
    return frame


def kinds() -> dict[str, str]:
    return {
        **{f"num_{i:02d}": "numeric" for i in range(N_NUMERIC)},
        **{f"cat_{i}": "categorical" for i in range(N_CATEGORICAL)},
    }


def run_ours(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[dict[str, bool], float]:
    from ml_platform.core.drift import compute_drift

    report = compute_drift(reference, current, columns=kinds())
    report.to_dict()
    return {c.column: c.drifted for c in report.columns}, report.drift_share


def run_evidently(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[dict[str, bool], float]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(
        numerical_columns=[c for c, k in kinds().items() if k == "numeric"],
        categorical_columns=[c for c, k in kinds().items() if k == "categorical"],
    )
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    result = snapshot.dict()
    prefix = "Value Drift for column "
    decisions = {
        t["name"][len(prefix) :]: str(t["status"]).endswith("FAIL")
        for t in result["tests"]
        if t["name"].startswith(prefix)
    }
    share = next(
        m["value"]["share"] for m in result["metrics"] if "DriftedColumnsCount" in m["metric_name"]
    )
    return decisions, float(share)


def child(tool: str, scenario: str, rows: int, seed: int) -> None:
    """Build the data, run one tool once, print one JSON line with time and memory.

    Imports happen before the clock starts: we compare the drift computation, not start-up.
    """
    if tool == "ours":
        import ml_platform.core.drift  # noqa: F401
    else:
        import evidently.presets  # noqa: F401
    reference = make_window(rows, seed, shifted=False)
    current = make_window(rows, seed + 1, shifted=scenario == "shifted")
    rss_start = _current_rss_mb()
    peak_reset = _reset_peak_rss()
    runner = run_ours if tool == "ours" else run_evidently
    start = time.perf_counter()
    decisions, share = runner(reference, current)
    seconds = time.perf_counter() - start
    rss_process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_run_peak = _peak_rss_mb() if peak_reset else rss_process_peak
    digest = hashlib.sha1()
    for frame in (reference, current):
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    print(
        json.dumps(
            {
                "tool": tool,
                "scenario": scenario,
                "seconds": seconds,
                "rss_start_mb": rss_start,
                "rss_run_peak_mb": rss_run_peak,
                "rss_process_peak_mb": rss_process_peak,
                "drift_share": share,
                "decisions": decisions,
                "fingerprint": digest.hexdigest()[:12],
            }
        )
    )


def _current_rss_mb() -> float:
    """Resident memory now (Linux /proc), as opposed to ru_maxrss, the high-water mark."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM), so the peak we read belongs to the tool run."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def spawn(tool: str, scenario: str, rows: int, seed: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        tool,
        "--scenario",
        scenario,
        "--rows",
        str(rows),
        "--seed",
        str(seed),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{tool}/{scenario} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_files(rows: int, seed: int, folder: Path) -> dict[str, Path]:
    """The reference and both current windows as parquet files, written one at a time."""
    paths = {}
    for name, window_seed, shifted in (
        ("reference", seed, False),
        ("shifted", seed + 1, True),
        ("control", seed + 1, False),
    ):
        paths[name] = folder / f"{name}.parquet"
        make_window(rows, window_seed, shifted).to_parquet(paths[name], index=False)
    return paths


def evidently_on_files(reference: str, current: str) -> None:
    """What a user of Evidently runs: read both files with pandas, run the preset, print JSON."""
    decisions, share = run_evidently(pd.read_parquet(reference), pd.read_parquet(current))
    print(json.dumps({"decisions": decisions, "drift_share": share}))


def read_only(reference: str, current: str) -> None:
    """The floor: start Python, import pyarrow, read both files whole."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(reference), pq.read_table(current)]
    print(json.dumps({"rows": [t.num_rows for t in tables]}))


def timed_process(cmd: list[str]) -> dict:
    """Wall time and peak RSS of one child process (its own rusage via wait4, not the max over
    all children that RUSAGE_CHILDREN would give)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child_process = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(child_process.pid, 0)
        seconds = time.perf_counter() - start
        child_process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    return {
        "seconds": seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "code": child_process.returncode,
        "stdout": stdout,
        "stderr": stderr,
    }


def whole_processes(paths: dict[str, Path], scenarios: tuple[str, ...]) -> dict:
    """Each tool as a user runs it, on the files; returns timings, peaks and decisions."""
    ref = str(paths["reference"])
    results = {}
    for scenario in scenarios:
        cur = str(paths[scenario])
        me = [sys.executable, __file__]
        commands = {
            "floor": [*me, "--child-files", "read", ref, cur],
            "ours": [str(ML_PLATFORM), "drift", ref, cur, "--format", "json"],
            "evidently": [*me, "--child-files", "evidently", ref, cur],
        }
        for tool, cmd in commands.items():
            run = timed_process(cmd)
            if run["code"] not in ((0, 1) if tool == "ours" else (0,)):
                sys.exit(f"{tool}/{scenario} failed ({run['code']}):\n{run['stderr'][-3000:]}")
            payload = json.loads(run["stdout"])
            if tool == "ours":
                payload = {
                    "decisions": {c["column"]: c["drifted"] for c in payload["columns"]},
                    "drift_share": payload["drift_share"],
                }
            results[tool, scenario] = {**run, **payload}
            print(
                f"  {scenario} {tool}: {run['seconds']:.2f} s, {run['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    return results


def print_whole_processes(runs: dict, rows: int) -> dict[str, float]:
    print(
        f"\nWhole processes on parquet files, {rows:,} rows x {N_NUMERIC + N_CATEGORICAL} columns"
    )
    print(f"{'scenario':9} {'process':42} {'wall s':>8} {'peak RSS':>10}")
    labels = {
        "floor": "floor: python + pyarrow read both files",
        "ours": "ml-platform drift REF CUR --format json",
        "evidently": "pandas read + Evidently DataDriftPreset",
    }
    for (tool, scenario), r in runs.items():
        print(f"{scenario:9} {labels[tool]:42} {r['seconds']:8.2f} {r['peak_rss_mb']:7.0f} MB")
    ours, ev, floor = (runs[t, "shifted"] for t in ("ours", "evidently", "floor"))
    figures = {
        "speedup": ev["seconds"] / ours["seconds"],
        "memory_ratio": ours["peak_rss_mb"] / ev["peak_rss_mb"],
        "over_floor": ours["seconds"] / floor["seconds"],
    }
    print(
        f"\nshifted: speed-up {figures['speedup']:.1f}x, peak RSS ratio ours / Evidently "
        f"{figures['memory_ratio']:.2f}, ours / read-only floor {figures['over_floor']:.2f}x time, "
        f"{ours['peak_rss_mb'] / floor['peak_rss_mb']:.2f}x memory"
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--child", choices=["ours", "evidently"], help=argparse.SUPPRESS)
    parser.add_argument("--scenario", choices=["shifted", "control"], help=argparse.SUPPRESS)
    parser.add_argument("--child-files", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--child-write", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=Path, help="write the parquet files here and keep them")
    parser.add_argument(
        "--shifted-only",
        action="store_true",
        help="whole processes on the shifted files and our in-process run only (one Evidently "
        "run instead of four, for a busy machine)",
    )
    args = parser.parse_args()
    if args.child:
        child(args.child, args.scenario, args.rows, args.seed)
        return 0
    if args.child_write:
        write_files(args.rows, args.seed, args.child_write)
        return 0
    if args.child_files:
        what, reference, current = args.child_files
        (evidently_on_files if what == "evidently" else read_only)(reference, current)
        return 0
    if importlib.util.find_spec("evidently") is None:
        print(
            "evidently is not installed; install the bench extra: pip install -e '.[bench]' "
            "(pins evidently==0.7.*, pandas<3)",
            file=sys.stderr,
        )
        return 2
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="drift_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        scenarios = ("shifted",) if args.shifted_only else ("shifted", "control")
        # The files are written by a child: a process's peak RSS counts the peak of the process
        # it was started from (the kernel keeps the pre-exec high-water mark), so this one
        # must never hold the frames.
        write = [sys.executable, __file__, "--child-write", str(folder), "--rows", str(args.rows)]
        subprocess.run([*write, "--seed", str(args.seed)], check=True)
        paths = {name: folder / f"{name}.parquet" for name in ("reference", *scenarios)}
        processes = whole_processes(paths, scenarios)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    tools = ("ours",) if args.shifted_only else ("ours", "evidently")
    runs = {(tool, sc): spawn(tool, sc, args.rows, args.seed) for sc in scenarios for tool in tools}
    whole = print_whole_processes(processes, args.rows)
    if args.shifted_only:
        print_quick(runs["ours", "shifted"], processes, whole)
    else:
        print_results(runs, args.rows, processes, whole)
    return 0


def print_quick(ours: dict, processes: dict, whole: dict[str, float]) -> None:
    """--shifted-only: our in-process time, and the whole-process verdicts side by side."""
    print(
        f"\nours in process (shifted): {ours['seconds']:.2f} s, peak in run "
        f"{ours['rss_run_peak_mb']:.0f} MB"
    )
    mine, theirs = processes["ours", "shifted"], processes["evidently", "shifted"]
    same = [c for c in kinds() if mine["decisions"][c] == theirs["decisions"].get(c)]
    assert ours["decisions"] == mine["decisions"], "in-process and CLI verdicts differ"
    print(f"{'column':8} {'shift injected':>14} {'ours (CLI)':>11} {'Evidently (files)':>18}")
    for c in kinds():
        injected = "yes" if c in SHIFTED_COLUMNS else "no"
        print(
            f"{c:8} {injected:>14} {_yn(mine['decisions'][c]):>11} "
            f"{_yn(theirs['decisions'].get(c)):>18}"
        )
    print(f"\nsame verdict: {len(same)}/{len(kinds())}")
    checks = [
        (
            f"whole-process speed-up >= {TARGETS['speedup']:.0f}x",
            whole["speedup"] >= TARGETS["speedup"],
        ),
        (
            "whole-process peak RSS <= 0.2 of Evidently",
            whole["memory_ratio"] <= TARGETS["memory_ratio"],
        ),
        ("same verdict on every column", len(same) == len(kinds())),
    ]
    print("\n" + "\n".join(f"target {name}: {'met' if ok else 'NOT met'}" for name, ok in checks))


def print_results(runs: dict, rows: int, processes: dict, whole: dict[str, float]) -> None:
    ours, ev = runs["ours", "shifted"], runs["evidently", "shifted"]
    assert ours["fingerprint"] == ev["fingerprint"], "the tools saw different data"
    version = importlib.metadata.version("evidently")
    print(f"\nIn process (imports and data build before the clock), data {ours['fingerprint']}\n")
    print(
        f"{'scenario':9} {'tool':18} {'time s':>8} {'RSS at start':>13} {'peak RSS in run':>16}"
        f" {'run - start':>12} {'process peak':>13} {'drift_share':>12}"
    )
    for (tool, scenario), r in runs.items():
        name = f"evidently {version}" if tool == "evidently" else "ml_platform"
        print(
            f"{scenario:9} {name:18} {r['seconds']:8.2f} {r['rss_start_mb']:10.0f} MB "
            f"{r['rss_run_peak_mb']:13.0f} MB {r['rss_run_peak_mb'] - r['rss_start_mb']:9.0f} MB "
            f"{r['rss_process_peak_mb']:10.0f} MB {r['drift_share']:12.2f}"
        )
    speedup = ev["seconds"] / ours["seconds"]
    memory_ratio = ours["rss_run_peak_mb"] / ev["rss_run_peak_mb"]
    work_ratio = (ours["rss_run_peak_mb"] - ours["rss_start_mb"]) / (
        ev["rss_run_peak_mb"] - ev["rss_start_mb"]
    )
    print(f"\nin-process speed-up (Evidently time / ours, shifted): {speedup:.1f}x")
    print(
        f"in-process memory ratio ours / Evidently (shifted): peak RSS in run {memory_ratio:.2f}, "
        f"memory added by the run {work_ratio:.3f}"
    )
    whole_ours, whole_ev = processes["ours", "shifted"], processes["evidently", "shifted"]
    print(
        f"\n{'column':8} {'shift injected':>14} {'ours':>8} {'Evidently':>10} "
        f"{'ours (CLI)':>11} {'Evidently (files)':>18}"
    )
    agree = 0
    for column in kinds():
        verdicts = [
            ours["decisions"][column],
            ev["decisions"].get(column),
            whole_ours["decisions"].get(column),
            whole_ev["decisions"].get(column),
        ]
        agree += len(set(verdicts)) == 1
        injected = "yes" if column in SHIFTED_COLUMNS else "no"
        print(
            f"{column:8} {injected:>14} {_yn(verdicts[0]):>8} {_yn(verdicts[1]):>10} "
            f"{_yn(verdicts[2]):>11} {_yn(verdicts[3]):>18}"
        )
    agreement = agree / len(kinds())
    print(f"\nsame verdict in all four runs (shifted): {agree}/{len(kinds())} = {agreement:.0%}")
    control = {k: processes[k, "control"]["drift_share"] for k in ("ours", "evidently")}
    ours_share, ev_share = control["ours"], control["evidently"]
    print(f"control drift_share (files): ours {ours_share:.2f}, Evidently {ev_share:.2f}")
    checks = [
        (
            f"whole-process speed-up >= {TARGETS['speedup']:.0f}x",
            whole["speedup"] >= TARGETS["speedup"],
        ),
        (
            f"whole-process peak RSS <= {TARGETS['memory_ratio']:g} of Evidently",
            whole["memory_ratio"] <= TARGETS["memory_ratio"],
        ),
        ("same verdict on every column", agreement >= TARGETS["agreement"]),
    ]
    print("\n" + "\n".join(f"target {name}: {'met' if ok else 'NOT met'}" for name, ok in checks))


def _yn(value: bool | None) -> str:
    return "-" if value is None else ("drift" if value else "stable")


if __name__ == "__main__":
    sys.exit(main())
