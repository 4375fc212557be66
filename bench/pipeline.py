"""Benchmark: the whole graph under Dagster against the same core functions in a plain script.

    python bench/pipeline.py [--stores 1000] [--days 730] [--quick] [--profile]

It reports, with every figure a ratio against a baseline measured in the same run:

1. the whole graph under Dagster (the demo's three runs: the ingest job over the full range as one
   single-run backfill, the training job, predictions over the range) against a plain script that
   calls the same `core` functions on the same files and writes the same parquet files;
2. one new day's ingest run (after the full backfill) against the full ingest backfill;
3. one new day with the long history against one new day with a short history;
4. the peak RSS of the process that runs the Dagster graph.

Each configuration runs in its own interpreter and its own temp project root (params.yaml,
DAGSTER_HOME, ML_PLATFORM_ROOT and cwd of its own), so imports, caches and memory belong to it
alone. Landing files are generated once and hard-linked into every root. Each new-day run is a
fresh process (as a run launched by the daemon would be), alternating between the two histories
so that a change in machine load hits both alike.

MLflow is included on both sides: the plain script logs the run, registers the model with skops
and sets the aliases through the same `ModelRegistry` and `OnlineStore` classes, used as plain
objects. What the plain script does not do is exactly what orchestration adds: the event log,
per-partition metadata, data-version provenance, hand-off through the IO manager (the Dagster
graph reads back what the previous asset wrote) and reloading models from the registry.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"graph_ratio": 1.3, "new_day_share": 0.05, "history_ratio": 1.2, "peak_rss_gb": 1.0}
LARGE_PEAK_RSS_GB = 6.0  # the peak RSS target above 1,000 series (issue 16: 10,000 series)
QUICK = {"stores": 100, "days": 120, "short_history": 60}
ENV_PREFIXES = (
    "DAGSTER_EMIT",
    "DAGSTER_EVENT",
    "ML_PLATFORM_",
    "PYTHONPATH",
    "MLFLOW_",
    "MALLOC_",
)
GB = 1024**3
MB = 1024**2


# ── shared helpers ──────────────────────────────────────────────────────────────────────────────


def log(message: str) -> None:
    print(message, flush=True)


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def load_pipeline_spec(name: str, root: Path = REPO_ROOT):
    from ml_platform.specs import SPEC_DIR, load_spec

    return load_spec(SPEC_DIR / f"{name}.yaml", root)


def create_mlflow_store(tracking_uri: str) -> None:
    """Open the MLflow store (creating the database on first use) before timing starts.

    Process setup, kept out of every timed run on both sides: first-time migrations take seconds,
    and importing MLflow's SQL store about one more in every process.
    """
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)


def make_platform_root(path: Path) -> Path:
    """A project root with its own params.yaml (as `ml_platform_tests.conftest` makes them)."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "params.yaml", path / "params.yaml")
    return path


def link_landing(source: Path, target: Path, days: list[date]) -> None:
    """Hard-link (copy across file systems) landing files: raw files are never modified."""
    target.mkdir(parents=True, exist_ok=True)
    for day in days:
        name = f"{day.isoformat()}.csv"
        try:
            os.link(source / name, target / name)
        except OSError:
            shutil.copy2(source / name, target / name)


def series_layout(series: int) -> tuple[int, int]:
    """(stores, products) for `series` daily series: store ids have four digits (S0001..S9999),
    so 10,000 series are 5,000 stores × 2 products: the same rows per day, the same entities."""
    for products in range(1, 100):
        if series % products == 0 and series // products <= 9999:
            return series // products, products
    raise ValueError(f"{series} series cannot be laid out as at most 9,999 stores × 99 products")


def day_range(first: date, count: int) -> list[date]:
    return [first + timedelta(days=i) for i in range(count)]


class PeakRss:
    """Peak RSS per stage: VmHWM, reset between stages through /proc/self/clear_refs."""

    def __init__(self) -> None:
        self.overall = self._hwm()
        self.resettable = self._reset()

    @staticmethod
    def _hwm() -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @staticmethod
    def _reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def start(self) -> None:
        self.overall = max(self.overall, self._hwm())
        self._reset()

    def stage_peak(self) -> int:
        peak = self._hwm()
        self.overall = max(self.overall, peak)
        return peak


def current_rss() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class Heartbeat:
    """Progress for long runs: elapsed time, RSS and data files written so far, every `every` s."""

    def __init__(self, label: str, data_dir: Path, every: float = 20.0) -> None:
        self.label, self.data_dir, self.every = label, data_dir, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Heartbeat:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _counts(self) -> str:
        if not self.data_dir.is_dir():
            return ""
        parts = []
        for stage in sorted(p for p in self.data_dir.iterdir() if p.is_dir()):
            parts.append(f"{stage.name} {sum(1 for _ in stage.glob('*.parquet'))}")
        return ", files: " + ", ".join(parts) if parts else ""

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            elapsed = time.monotonic() - self._started
            log(
                f"      … {self.label}: {elapsed:.0f}s, RSS {current_rss() / MB:,.0f} MB"
                f"{self._counts()}"
            )


# ── child: the plain-script baseline ───────────────────────────────────────────────────────────


def plain_child(cfg: dict) -> dict:
    """The functions the asset bodies call, wired by hand, with the same parquet writes and side
    effects. Training and promotion call the very helpers of `assets/modeling.py`, so this
    baseline cannot drift from what the graph runs; only the orchestration around them differs."""
    import pandas as pd

    from ml_platform.core import training
    from ml_platform.core.contracts import read_landing_bytes, read_landing_csv, validate_batch
    from ml_platform.core.features import build_features, encode_by_day
    from ml_platform.core.storage import atomic_write, encode_frame, md5_bytes
    from ml_platform.resources.online_store import OnlineStore
    from ml_platform.resources.registry import CHAMPION, ModelRegistry
    from ml_platform.settings import online_store_url

    root = Path(cfg["root"])
    spec = load_pipeline_spec(cfg["pipeline"], root)
    days = day_range(date.fromisoformat(cfg["first_day"]), cfg["days"])
    landing, data = root / spec.landing.directory, root / "data" / spec.name
    online = OnlineStore(url=online_store_url(root))
    registry = ModelRegistry(
        tracking_uri=f"sqlite:///{root / '.ml_platform' / 'mlflow.db'}",
        artifact_root=str(root / ".ml_platform" / "mlartifacts"),
    )
    create_mlflow_store(registry.tracking_uri)
    peak, stages = PeakRss(), {}

    def write(stage: str, key: str, payload: bytes) -> None:
        atomic_write(data / stage / f"{key}.parquet", payload)

    def ingest_day(day: date) -> pd.DataFrame:
        # As the `raw` and `validated` bodies: read the bytes once, hash and parse those bytes.
        key, path = day.isoformat(), landing / f"{day.isoformat()}.csv"
        payload = read_landing_bytes(path, landing)
        md5_bytes(payload)
        raw = read_landing_csv(payload, path.name)
        write("raw", key, encode_frame(raw).payload)
        result = validate_batch(raw, spec.contract, day)
        write("validated", key, encode_frame(result.valid).payload)
        write("quarantine", key, encode_frame(result.quarantine).payload)
        return result.valid

    def write_by_day(stage: str, frame: pd.DataFrame, days: list[date]) -> None:
        for key, encoded in encode_by_day(
            frame, spec.timestamp, [d.isoformat() for d in days]
        ).items():
            write(stage, key, encoded.payload)

    def write_features(frame: pd.DataFrame, feature_days: list[date]) -> None:
        write_by_day("features", frame, feature_days)
        online.write_latest(spec, frame)

    def write_predictions(frame: pd.DataFrame, pred_days: list[date]) -> None:
        # As the `predictions` body: the champion comes from the registry by alias.
        model, version = registry.load_model(spec.name, CHAMPION, training.trusted_types(spec))
        write_by_day(
            "predictions",
            training.prediction_frame(model, frame, spec, int(version.version)),
            pred_days,
        )

    def timed(name: str):
        return _Stage(name, stages, peak, data)

    with timed("ingest"):
        valid = []
        for i, day in enumerate(days, 1):
            valid.append(ingest_day(day))
            if i % max(1, len(days) // 5) == 0:
                log(f"      plain ingest: {i}/{len(days)} partitions")
        features = build_features(pd.concat(valid, ignore_index=True), spec, days)
        del valid
        write_features(features, days)
    with timed("training"):
        plain_training(spec, features, registry, root)
    with timed("predictions"):
        write_predictions(features, days)
    del features

    new_days = []
    for key in cfg.get("new_days", []):
        day = date.fromisoformat(key)
        link_landing(Path(cfg["landing_source"]), landing, [day])
        started, cpu = time.perf_counter(), time.process_time()
        today = ingest_day(day)
        history = [
            pd.read_parquet(data / "validated" / f"{d.isoformat()}.parquet")
            for d in day_range(day - timedelta(days=spec.lookback_days), spec.lookback_days)
        ]
        frame = build_features(pd.concat([*history, today], ignore_index=True), spec, [day])
        write_features(frame, [day])
        write_predictions(frame, [day])
        new_days.append(
            {
                "day": key,
                "seconds": time.perf_counter() - started,
                "cpu": time.process_time() - cpu,
            }
        )
        log(f"      plain new day {key}: {new_days[-1]['seconds']:.2f}s")
    return {"stages": stages, "new_days": new_days, "peak_rss": peak.overall}


def plain_training(spec, features, registry, root: Path) -> str:
    """training_set → `_train_and_register` → `_holdout_losses` → `decide` → champion alias.

    The same functions the `training_set`, `challenger` and `promotion` assets call. The tracker
    is the `mlflow` module inside a started run: dagster-mlflow's tracker resource is that module
    with the run started for the step. What is left out is orchestration: the lineage lookup
    through the event log, the fingerprint reuse check, the audit record and DVC.
    """
    import mlflow

    from ml_platform.assets.modeling import LOSS_LABEL, _holdout_losses, _train_and_register
    from ml_platform.core import training
    from ml_platform.core.promotion import decide
    from ml_platform.core.storage import atomic_write, encode_frame
    from ml_platform.resources.registry import CHAMPION, FINGERPRINT_TAG

    frame = training.build_training_set(features, spec)
    encoded = encode_frame(frame)
    atomic_write(root / "data" / spec.name / "training_set.parquet", encoded.payload)
    lineage = {
        "training_set_md5": encoded.md5,
        "spec_hash": spec.fingerprint(),
        FINGERPRINT_TAG: encoded.md5[:24],
    }
    mlflow.set_tracking_uri(registry.tracking_uri)
    mlflow.start_run(experiment_id=registry.ensure_experiment(spec.name))
    version, _metrics = _train_and_register(spec, frame, registry, mlflow, lineage)
    losses = _holdout_losses(frame, spec, registry, has_champion=False)
    decision = decide(
        losses["challenger"],
        losses["baseline"],
        losses.get("champion"),
        spec.promotion.alpha,
        spec.promotion.min_relative_improvement,
        spec.promotion.test,
        loss_name=LOSS_LABEL[spec.loss_name],
    )
    registry.tag_version(spec.name, version, decision.as_tags())
    if decision.promote:
        registry.set_alias(spec.name, CHAMPION, version)
    log(f"      plain promotion: {decision.reason}")
    return version


class _Stage:
    """Times one stage and records its peak RSS into `stages`."""

    def __init__(self, name: str, stages: dict, peak: PeakRss, data_dir: Path) -> None:
        self.name, self.stages, self.peak = name, stages, peak
        self.heartbeat = Heartbeat(name, data_dir)

    def __enter__(self) -> _Stage:
        self.peak.start()
        self.heartbeat.__enter__()
        self.started, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds, cpu = time.perf_counter() - self.started, time.process_time() - self.cpu
        self.heartbeat.__exit__()
        rss = self.peak.stage_peak()
        self.stages[self.name] = {"seconds": seconds, "cpu": cpu, "peak_rss": rss}
        log(f"      {self.name}: {seconds:.1f}s, peak RSS {rss / MB:,.0f} MB")


# ── child: the graph under Dagster ─────────────────────────────────────────────────────────────


def dagster_child(cfg: dict) -> dict:
    """The demo's three runs (or one new day's ingest run) against a persistent instance."""
    peak = PeakRss()
    started = time.perf_counter()
    import dagster as dg

    from ml_platform.assemble import build_definitions, mlflow_uri
    from ml_platform.automation.jobs import ingest_job_name, training_job_name
    from ml_platform.demo import QUIET, RANGE_END, RANGE_START
    from ml_platform.instance import ensure_dagster_home

    root = Path(cfg["root"])
    ensure_dagster_home(root)
    spec = load_pipeline_spec(cfg["pipeline"], root)
    defs = build_definitions(root, specs=[spec])  # as the pipeline's own code location does
    instance = dg.DagsterInstance.get()
    ingest = defs.resolve_job_def(ingest_job_name(spec))
    training = defs.resolve_job_def(training_job_name(spec))
    # Every run is timed from the same point: imports, definitions, instance and MLflow store
    # opened. The plain script opens its store before timing too.
    create_mlflow_store(mlflow_uri(root))
    setup_seconds = time.perf_counter() - started
    setup_rss = peak.stage_peak()
    if cfg["mode"] == "dagster":
        first = date.fromisoformat(cfg["first_day"])
        last = (first + timedelta(days=cfg["days"] - 1)).isoformat()
        range_tags = {RANGE_START: first.isoformat(), RANGE_END: last}
        predictions = [dg.AssetKey([spec.name, "predictions"])]
        runs = [
            ("ingest", ingest, {"tags": range_tags}),
            ("training", training, {}),
            ("predictions", ingest, {"tags": range_tags, "asset_selection": predictions}),
        ]
    else:
        runs = [("new_day", ingest, {"partition_key": cfg["new_day"]})]
    stages = {}
    data_dir = root / "data" / spec.name
    for name, job, kwargs in runs:
        profiler = _profiler(cfg)
        peak.start()
        with Heartbeat(name, data_dir):
            t0, cpu0 = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            result = job.execute_in_process(
                run_config=QUIET, instance=instance, raise_on_error=False, **kwargs
            )
            if profiler:
                profiler.disable()
            seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stage = {
            "seconds": seconds,
            "cpu": cpu,
            "peak_rss": peak.stage_peak(),
            "success": result.success,
            "events": len(instance.all_logs(result.run_id)),
            "steps": {
                s.step_key.split("__")[-1]: s.end_time - s.start_time
                for s in instance.get_run_step_stats(result.run_id)
                if s.end_time and s.start_time
            },
            "materialized": sorted(
                {"/".join(e.asset_key.path[1:]) for e in result.get_asset_materialization_events()}
            ),
        }
        if profiler:
            stage["profile"] = str(Path(cfg["profile_dir"]) / f"{cfg['label']}_{name}.prof")
            profiler.dump_stats(stage["profile"])
        stages[name] = stage
        log(
            f"      {name}: {'ok' if result.success else 'FAILED'} in {seconds:.1f}s, "
            f"{stage['events']} events, peak RSS {stage['peak_rss'] / MB:,.0f} MB"
        )
        if not result.success:
            for event in result.all_events:
                if event.is_step_failure and event.step_failure_data:
                    log(f"      {event.step_key}: {event.step_failure_data.error.message[:500]}")
            break
    return {
        "new_day": cfg.get("new_day"),
        "stages": stages,
        "setup_seconds": setup_seconds,
        "setup_rss": setup_rss,
        "peak_rss": peak.overall,
    }


def _profiler(cfg: dict):
    if not cfg.get("profile_dir"):
        return None
    import cProfile

    return cProfile.Profile()


def run_child_from_file(path: Path) -> int:
    cfg = json.loads(path.read_text())
    result = plain_child(cfg) if cfg["mode"] == "plain" else dagster_child(cfg)
    result["load_average_end"] = os.getloadavg()
    Path(cfg["result"]).write_text(json.dumps(result))
    return 0


# ── parent: orchestrate the children and report ────────────────────────────────────────────────


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.spec = load_pipeline_spec(args.pipeline)
        self.landing = workdir / "landing"
        self.first = self.spec.landing.start_date
        self.history = day_range(self.first, args.days)
        self.new_days = day_range(self.first + timedelta(days=args.days), args.new_days)
        self.short_history = self.history[-args.short_history :]
        self.failures: list[str] = []
        self.loads: list[float] = [os.getloadavg()[0]]

    def generate(self) -> None:
        from ml_platform.core.datagen import GeneratorConfig, write_landing_files

        if self.args.landing:  # generated by an earlier run of the same size and seed
            self.landing = self.args.landing.resolve()
            log(f"reusing the landing files in {self.landing}")
            return
        total = self.args.days + self.args.new_days
        log(f"generating {self.args.stores} stores × {total} days of landing files once")
        started = time.monotonic()

        def progress(done: int, count: int) -> None:
            if done == count or done % max(1, count // 5) == 0:
                log(f"  generate: {done}/{count} days ({time.monotonic() - started:.0f}s)")

        stores, products = series_layout(self.args.stores)
        if products > 1:
            log(f"  {self.args.stores} series = {stores} stores × {products} products")
        config = GeneratorConfig(
            stores=stores,
            products=products,
            days=total,
            start=self.first,
            holidays=tuple(self.spec.features.holidays),
        )
        write_landing_files(config, self.landing, progress=progress)

    def root(self, label: str, days: list[date]) -> Path:
        root = make_platform_root(self.workdir / label)
        link_landing(self.landing, root / self.spec.landing.directory, days)
        return root

    def child(self, label: str, root: Path, **cfg: object) -> dict | None:
        """Run one configuration in a fresh interpreter; its Dagster logs go to a file."""
        result_path = self.workdir / f"{label}.json"
        cfg = {
            "label": label,
            "root": str(root),
            "pipeline": self.spec.name,
            "result": str(result_path),
            "landing_source": str(self.landing),
            **cfg,
        }
        cfg_path = self.workdir / f"{label}.config.json"
        cfg_path.write_text(json.dumps(cfg))
        env = {
            **os.environ,
            "DAGSTER_HOME": str(root / ".ml_platform" / "dagster_home"),
            "ML_PLATFORM_ROOT": str(root),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        log_path = self.workdir / f"{label}.log"
        self.loads.append(os.getloadavg()[0])
        started = time.perf_counter()
        with log_path.open("w") as stderr:
            code = subprocess.call(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(cfg_path)],
                cwd=root,
                env=env,
                stderr=stderr,
            )
        wall = time.perf_counter() - started
        self.loads.append(os.getloadavg()[0])
        if code != 0 or not result_path.exists():
            tail = log_path.read_text().splitlines()[-25:]
            self.failures.append(f"{label}: exit code {code} (log {log_path})")
            log(f"  {label} FAILED (exit {code}); last lines of {log_path}:")
            for line in tail:
                log(f"    {line}")
            return None
        result = json.loads(result_path.read_text())
        result["process_seconds"] = wall
        failed = [k for k, s in result.get("stages", {}).items() if s.get("success") is False]
        if failed:
            self.failures.append(f"{label}: run failed in {failed} (log {log_path})")
        return result

    def run(self) -> dict:
        args = self.args
        self.generate()
        n_long = len(self.history)
        keys = [d.isoformat() for d in self.new_days]
        out: dict = {}
        steps = 1 if args.only_graph else 4
        plain_cfg = {
            "mode": "plain",
            "first_day": self.first.isoformat(),
            "days": n_long,
            "new_days": keys,
        }
        graph_cfg = {"mode": "dagster", "first_day": self.first.isoformat(), "days": n_long}
        long_root = self.root("dagster_long", self.history)
        if args.parallel and not args.only_graph:
            log("\n[1+2/4] plain script and Dagster graph side by side (--parallel)")
            plain_root = self.root("plain", self.history)
            worker = threading.Thread(
                target=lambda: out.update(plain=self.child("plain", plain_root, **plain_cfg))
            )
            worker.start()
            out["dagster_long"] = self.child("dagster_long", long_root, **graph_cfg)
            worker.join()
        else:
            if not args.only_graph:
                log(
                    f"\n[1/4] plain script: {n_long} days, training, predictions, "
                    f"{len(keys)} new days"
                )
                out["plain"] = self.child("plain", self.root("plain", self.history), **plain_cfg)
            log(
                f"\n[{2 if steps == 4 else 1}/{steps}] Dagster, {n_long} days: ingest backfill "
                "(one run), training, predictions"
            )
            out["dagster_long"] = self.child("dagster_long", long_root, **graph_cfg)
        if not args.only_graph:
            self.run_histories(out, long_root)
        if args.profile:
            self.run_profiles(out)
        return out

    def run_histories(self, out: dict, long_root: Path) -> None:
        n_long, n_short = len(self.history), len(self.short_history)
        short_root = None
        if not self.args.skip_short:
            log(f"\n[3/4] Dagster, {n_short} days of history: the same three runs")
            short_root = self.root("dagster_short", self.short_history)
            out["dagster_short"] = self.child(
                "dagster_short",
                short_root,
                mode="dagster",
                first_day=self.short_history[0].isoformat(),
                days=n_short,
            )
        log(f"\n[4/4] new days, one fresh process per run, alternating {n_long}/{n_short} history")
        out["new_long"], out["new_short"] = [], []
        for day in self.new_days:
            for label, root, bucket in (
                ("long", long_root, out["new_long"]),
                ("short", short_root, out["new_short"]),
            ):
                if root is None:  # --skip-short
                    continue
                link_landing(self.landing, root / self.spec.landing.directory, [day])
                result = self.child(
                    f"new_{label}_{day.isoformat()}", root, mode="new_day", new_day=day.isoformat()
                )
                if result:
                    stage = result["stages"]["new_day"]
                    bucket.append(result)
                    log(
                        f"  {day} with {label} history: run {stage['seconds']:.2f}s "
                        f"(CPU {stage['cpu']:.2f}s), process {result['process_seconds']:.1f}s"
                    )

    def run_profiles(self, out: dict) -> None:
        n_long = len(self.history)
        log(f"\n[profile] Dagster, {n_long} days, under cProfile (timings not used above)")
        profile_root = self.root("dagster_profile", self.history)
        out["profile"] = self.child(
            "dagster_profile",
            profile_root,
            mode="dagster",
            first_day=self.first.isoformat(),
            days=n_long,
            profile_dir=str(self.workdir),
        )
        link_landing(self.landing, profile_root / self.spec.landing.directory, self.new_days[:1])
        out["profile_new_day"] = self.child(
            "profile_new_day",
            profile_root,
            mode="new_day",
            new_day=self.new_days[0].isoformat(),
            profile_dir=str(self.workdir),
        )


def stage_value(result: dict | None, stage: str, field: str = "seconds") -> float | None:
    if not result or stage not in result["stages"]:
        return None
    return result["stages"][stage][field]


def fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def median_of(runs: list[dict], field: str) -> float | None:
    """Median over successful new-day runs of `field` ("seconds", "cpu" or "process")."""
    ok = [r for r in runs if r["stages"]["new_day"]["success"]]
    if field == "process":
        values = [r["process_seconds"] for r in ok]
    else:
        values = [r["stages"]["new_day"][field] for r in ok]
    return statistics.median(values) if values else None


Figure = tuple[str, str, str, str, bool | None]


def report_graph(bench: Bench, out: dict) -> tuple[float | None, float | None]:
    """The per-run table; returns the whole-graph ratio in wall time and in CPU time."""
    args, plain, long_ = bench.args, out.get("plain"), out.get("dagster_long")
    n_long = len(bench.history)
    log("\n" + "=" * 105)
    log(f"Results: {args.stores} stores × {n_long} days ({args.stores * n_long:,} rows)")
    log("=" * 105)
    log(f"{'':<40}{'── wall seconds ──':^27}{'── CPU seconds ──':^27}")
    log(
        f"{'run':<40}{'Dagster':>9}{'plain':>9}{'ratio':>9}{'Dagster':>9}{'plain':>9}"
        f"{'ratio':>9}{'peak RSS':>11}"
    )
    stages = {
        "ingest": f"ingest backfill ({n_long} partitions)",
        "training": "training (set → challenger → promotion)",
        "predictions": f"predictions ({n_long} partitions)",
    }
    totals = {"seconds": [0.0, 0.0], "cpu": [0.0, 0.0]}
    for stage, label in stages.items():
        row = f"{label:<40}"
        for field in ("seconds", "cpu"):
            d, p = stage_value(long_, stage, field), stage_value(plain, stage, field)
            totals[field][0] += d or 0.0
            totals[field][1] += p or 0.0
            row += f"{fmt(d):>9}{fmt(p):>9}{fmt(ratio(d, p), '.2f'):>9}"
        rss = stage_value(long_, stage, "peak_rss")
        log(row + f"{fmt(rss and rss / MB, ',.0f', ' MB'):>11}")
    complete = all(stage_value(r, s) for r in (long_, plain) for s in stages)
    row, ratios = f"{'whole graph':<40}", []
    for field in ("seconds", "cpu"):
        d, p = totals[field] if complete else (None, None)
        ratios.append(ratio(d, p))
        row += f"{fmt(d):>9}{fmt(p):>9}{fmt(ratios[-1], '.2f'):>9}"
    log(row)
    if long_:
        events = {k: s["events"] for k, s in long_["stages"].items()}
        log(f"  event-log entries per run: {events}")
        log(
            "  not in the figures: Dagster process start-up (imports, build_definitions, "
            f"instance) {long_['setup_seconds']:.1f}s, RSS after it "
            f"{long_['setup_rss'] / MB:,.0f} MB"
        )
    if plain:
        log(f"  plain script process peak RSS {plain['peak_rss'] / MB:,.0f} MB")
    short = out.get("dagster_short")
    if short:
        log(
            f"  {len(bench.short_history)}-day platform: ingest "
            f"{fmt(stage_value(short, 'ingest'))}s, training {fmt(stage_value(short, 'training'))}"
            f"s, predictions {fmt(stage_value(short, 'predictions'))}s"
        )
    return ratios[0], ratios[1]


def report_new_days(bench: Bench, out: dict) -> None:
    n_long, n_short = len(bench.history), len(bench.short_history)
    log(
        f"\n{'new day: ingest job, one partition':<40}{'run s':>9}{'CPU s':>9}{'process s':>11}"
        f"{'events':>8}  materialised"
    )
    for runs, history in ((out.get("new_long", []), n_long), (out.get("new_short", []), n_short)):
        for r in runs:
            s = r["stages"]["new_day"]
            label = f"  {r['new_day']}, {history} days of history"
            log(
                f"{label:<40}{s['seconds']:>9.2f}{s['cpu']:>9.2f}{r['process_seconds']:>11.1f}"
                f"{s['events']:>8}  {','.join(s['materialized'])}"
                f"{'' if s['success'] else '  FAILED'}"
            )
    log_step_medians(out, n_long, n_short)
    plain = out.get("plain")
    if plain and plain.get("new_days"):
        wall = statistics.median(r["seconds"] for r in plain["new_days"])
        cpu = statistics.median(r["cpu"] for r in plain["new_days"])
        log(f"{'  plain script, same work, median':<40}{wall:>9.2f}{cpu:>9.2f}")
    backfill = stage_value(out.get("dagster_long"), "ingest")
    cold_long = median_of(out.get("new_long", []), "process")
    cold_short = median_of(out.get("new_short", []), "process")
    log(
        "  as fresh processes (start-up + run, what a daemon-launched run costs): "
        f"{fmt(ratio(cold_long, backfill), '.1%')} of the backfill, "
        f"history ratio {fmt(ratio(cold_long, cold_short), '.2f')}"
    )


def log_step_medians(out: dict, n_long: int, n_short: int) -> None:
    """Median seconds per step of the new-day runs: where a history difference comes from."""
    medians = {}
    for label, runs in (("long", out.get("new_long", [])), ("short", out.get("new_short", []))):
        steps = [r["stages"]["new_day"].get("steps", {}) for r in runs]
        names = sorted({name for s in steps for name in s})
        medians[label] = {n: statistics.median(s[n] for s in steps if n in s) for n in names}
    names = sorted(set(medians["long"]) | set(medians["short"]))
    if not names:
        return
    log(
        "  median seconds per step: "
        + ", ".join(
            f"{n} {medians['long'].get(n, 0):.2f} / {medians['short'].get(n, 0):.2f}" for n in names
        )
        + f"  ({n_long} / {n_short} days of history)"
    )


def report(bench: Bench, out: dict) -> list[Figure]:
    graph_wall, graph_cpu = report_graph(bench, out)
    if "new_long" in out:
        report_new_days(bench, out)
    long_ = out.get("dagster_long")
    peak = long_["peak_rss"] / GB if long_ else None
    new_peak = max((r["peak_rss"] for r in out.get("new_long", [])), default=None)
    log(
        f"\npeak RSS of the Dagster graph process {fmt(peak, '.2f', ' GB')}; "
        f"of a new-day run process {fmt(new_peak and new_peak / GB, '.2f', ' GB')}"
    )
    new_long, new_short = out.get("new_long", []), out.get("new_short", [])
    share = [
        ratio(median_of(new_long, f), stage_value(long_, "ingest", f)) for f in ("seconds", "cpu")
    ]
    history = [ratio(median_of(new_long, f), median_of(new_short, f)) for f in ("seconds", "cpu")]
    n_long, n_short = len(bench.history), len(bench.short_history)

    def met(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    rss_target = TARGETS["peak_rss_gb"] if bench.args.stores <= 1000 else LARGE_PEAK_RSS_GB

    return [
        (
            "1 whole graph, Dagster / plain script",
            f"≤ {TARGETS['graph_ratio']}",
            fmt(graph_wall, ".2f"),
            fmt(graph_cpu, ".2f"),
            met(graph_wall, TARGETS["graph_ratio"]),
        ),
        (
            "2 one new day / full ingest backfill",
            f"≤ {TARGETS['new_day_share']:.0%}",
            fmt(share[0], ".2%"),
            fmt(share[1], ".2%"),
            met(share[0], TARGETS["new_day_share"]),
        ),
        (
            f"3 new day, {n_long} / {n_short} days of history",
            f"≤ {TARGETS['history_ratio']}",
            fmt(history[0], ".2f"),
            fmt(history[1], ".2f"),
            met(history[0], TARGETS["history_ratio"]),
        ),
        (
            "4 peak RSS, Dagster graph process",
            f"≤ {rss_target:.1f} GB",
            fmt(peak, ".2f", " GB"),
            "",
            met(peak, rss_target),
        ),
    ]


# ── profile summary ────────────────────────────────────────────────────────────────────────────

# Self time grouped by where the code lives (first match wins).
BUCKETS = (
    ("SQLite (event log, run storage)", ("sqlite3", "sqlalchemy")),
    ("Dagster storage and events", ("dagster/_core/storage", "dagster/_core/events")),
    ("Dagster instance", ("dagster/_core/instance",)),
    ("Dagster execution, context, serdes", ("dagster/", "dagster_shared/")),
    ("pandera", ("pandera",)),
    ("parquet (pyarrow)", ("pyarrow",)),
    ("markdown metadata (tabulate)", ("tabulate",)),
    ("pandas", ("pandas",)),
    ("numpy", ("numpy",)),
    ("sklearn / scipy", ("sklearn", "scipy")),
    ("MLflow / skops", ("mlflow", "skops")),
    ("ml_platform", ("ml_platform",)),
    ("file I/O, fsync", ("posix", "io.", "_io")),
)

# Cumulative time of the places where the work enters (function name, file fragment).
ENTRY_POINTS = (
    ("raw asset body", "raw", "assets/ingest.py"),
    ("validated asset body", "validated", "assets/ingest.py"),
    ("  validate_batch (pandera contract)", "validate_batch", "core/contracts.py"),
    ("features asset body", "features", "assets/ingest.py"),
    ("  build_features", "build_features", "core/features.py"),
    ("  online store write_latest", "write_latest", "online_store.py"),
    ("predictions asset body", "predictions", "assets/modeling.py"),
    ("encode_frame (parquet + md5)", "encode_frame", "core/storage.py"),
    ("atomic_write (incl. fsync)", "atomic_write", "core/storage.py"),
    ("IO manager handle_output", "handle_output", "io_manager.py"),
    ("IO manager load_input", "load_input", "io_manager.py"),
    ("partitioned_output (metadata)", "partitioned_output", "assets/results.py"),
    ("  markdown_table (tabulate)", "markdown_table", "assets/results.py"),
    ("  column_schema", "column_schema", "assets/results.py"),
    ("add_asset_metadata", "add_asset_metadata", "dagster/_core/execution/context"),
    ("event log store_event", "store_event", "dagster/_core/storage"),
    ("data-version provenance", "_get_input_asset_version_info", "dagster/_core"),
    ("input data versions (step)", "_store_output_asset_observation", "dagster/_core"),
)


def summarise_profile(path: str, label: str, wall: float, top: int) -> None:
    import pstats

    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    buckets: dict[str, float] = {}
    for (filename, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        where = f"{filename}:{name}"
        bucket = next((b for b, needles in BUCKETS if any(n in where for n in needles)), "other")
        buckets[bucket] = buckets.get(bucket, 0.0) + tottime
    log(f"\nprofile of {label} ({wall:.1f}s under cProfile, {path})")
    log(f"  {'self time by library':<48}{'s':>9}{'share':>8}")
    for bucket, seconds in sorted(buckets.items(), key=lambda kv: -kv[1]):
        log(f"  {bucket:<48}{seconds:>9.1f}{seconds / total:>8.1%}")
    log(f"  {'cumulative time at entry points':<48}{'s':>9}{'share':>8}{'calls':>9}")
    for title, func, fragment in ENTRY_POINTS:
        found = [
            (ct, nc)
            for (filename, _line, name), (_cc, nc, _tt, ct, _callers) in stats.items()
            if name == func and fragment in filename.replace(os.sep, "/")
        ]
        if found:
            ct, nc = max(found)
            log(f"  {title:<48}{ct:>9.1f}{ct / total:>8.1%}{nc:>9}")
    log(f"  {'top functions by self time':<48}{'s':>9}{'share':>8}{'calls':>9}")
    ranked = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    for (filename, line, name), (_cc, nc, tottime, _ct, _callers) in ranked:
        where = f"{_short(filename)}:{line}({name})"
        log(f"  {where[-48:]:<48}{tottime:>9.1f}{tottime / total:>8.1%}{nc:>9}")


def _short(filename: str) -> str:
    for marker in ("site-packages/", "ml_platform/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# ── entry point ────────────────────────────────────────────────────────────────────────────────


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--stores", type=int, default=1000, help="daily series (over 9,999: stores × products)"
    )
    parser.add_argument("--days", type=int, default=730, help="history for the full backfill")
    parser.add_argument("--short-history", type=int, default=90, help="days, for figure 3")
    parser.add_argument("--new-days", type=int, default=3, help="new-day runs per history")
    parser.add_argument("--quick", action="store_true", help="100 stores × 120 days smoke run")
    parser.add_argument("--profile", action="store_true", help="add a cProfile'd Dagster run")
    parser.add_argument("--top", type=int, default=25, help="functions listed per profile")
    parser.add_argument("--pipeline", default="sales_forecast")
    parser.add_argument("--workdir", type=Path, help="where temp roots go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp roots afterwards")
    parser.add_argument(
        "--only-graph", action="store_true", help="run only the full-history Dagster graph"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--skip-short",
        action="store_true",
        help="no short-history runs (figure 3): figures 1, 2 and 4 sooner on a large run",
    )
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="run the plain script and the Dagster graph at the same time (a busy shared machine:"
        " read the CPU-time ratio)",
    )
    parser.add_argument(
        "--landing", type=Path, help="reuse landing files an earlier run generated (same size)"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.stores, args.days, args.short_history = (
            QUICK["stores"],
            QUICK["days"],
            QUICK["short_history"],
        )
    if not 45 <= args.short_history < args.days:
        parser.error("--short-history must be at least 45 days and shorter than --days")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child_from_file(args.child)
    from importlib.metadata import version

    base = args.workdir.resolve() if args.workdir else None
    if base:
        base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ml_platform_bench_", dir=base))
    log("ml_platform pipeline benchmark")
    log(
        f"  size: {args.stores} stores × {args.days} days; short history {args.short_history} "
        f"days; {args.new_days} new-day runs per history"
    )
    log(
        f"  machine: {os.cpu_count()} cores, {platform.machine()}, load average "
        f"{load_average()} (1/5/15 min); Python {platform.python_version()}, "
        f"dagster {version('dagster')}"
    )
    log("  MLflow logging and registration are included on both sides; the MLflow DB is created")
    log("  before timing on both. Run 3 selects `predictions` only (no drift step in the plain")
    log("  script); the backfill and new-day runs are the ingest job as it is defined.")
    tuned = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    if tuned:
        log(f"  environment passed to the runs: {tuned}")
    log(f"  work dir: {workdir}")
    started = time.monotonic()
    bench = Bench(args, workdir)
    try:
        out = bench.run()
        summary = report(bench, out)
        for key, label in (("profile", "the Dagster graph"), ("profile_new_day", "one new day")):
            result = out.get(key)
            for stage, s in ((result or {}).get("stages") or {}).items():
                summarise_profile(s["profile"], f"{label}: {stage}", s["seconds"], args.top)
    finally:
        if not (args.keep or args.profile):
            shutil.rmtree(workdir, ignore_errors=True)
    cores, busiest = os.cpu_count() or 1, max(bench.loads)
    log(
        f"\nSummary ({time.monotonic() - started:.0f}s; 1-minute load average between "
        f"{min(bench.loads):.1f} and {busiest:.1f} on {cores} cores)"
    )
    log(f"  {'figure':<46}{'target':>10}{'wall':>10}{'CPU':>10}  verdict (on wall time)")
    for figure, target, wall, cpu, ok in summary:
        verdict = "not measured" if ok is None else ("met" if ok else "NOT MET")
        log(f"  {figure:<46}{target:>10}{wall:>10}{cpu:>10}  {verdict}")
    if busiest > cores:
        log(
            "  The machine was busy (load above its core count): wall times stretch unevenly "
            "between runs\n  measured minutes apart, so read the CPU-time column as well."
        )
    for failure in bench.failures:
        log(f"  failure: {failure}")
    if args.keep or args.profile:
        log(f"  roots, logs and profiles kept in {workdir}")
    if bench.failures:
        return 1
    return 1 if args.strict and not all(ok for *_, ok in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
