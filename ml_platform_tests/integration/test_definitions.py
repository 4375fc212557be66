"""Snapshot of the definitions: a renamed asset, edge, check, job or sensor shows up in review."""

from __future__ import annotations

import shutil
import subprocess
import sys

import dagster as dg
import yaml

from ml_platform.definitions import build_definitions
from ml_platform_tests.conftest import REPO_ROOT

PIPELINES = ("sales_forecast", "customer_churn")  # every shipped spec: one group each
EDGES = {
    "raw": set(),
    "validated": {"raw"},
    "quarantine": {"raw"},
    "features": {"validated"},
    "training_set": {"features"},
    "challenger": {"training_set"},
    "promotion": {"training_set", "challenger"},
    "predictions": {"features", "promotion"},
    "drift_report": {"features", "predictions", "promotion"},
}
EXPECTED_EDGES = {
    f"{p}/{stage}": {f"{p}/{parent}" for parent in parents}
    for p in PIPELINES
    for stage, parents in EDGES.items()
}


def test_asset_graph_snapshot(tmp_path):
    graph = build_definitions(tmp_path).resolve_asset_graph()
    edges = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert edges == EXPECTED_EDGES


def test_checks_jobs_and_partitions_snapshot(tmp_path):
    defs = build_definitions(tmp_path)
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == {
        *((f"{p}/validated", "contract") for p in PIPELINES),
        *((f"{p}/drift_report", "no_dataset_drift") for p in PIPELINES),
    }
    blocking = {
        spec.key.name
        for node in graph.asset_nodes
        for spec in node.assets_def.check_specs
        if spec.blocking
    }
    assert blocking == {"contract"}
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    assert {f"{p}_{kind}" for p in PIPELINES for kind in ("ingest", "training")} <= jobs
    assert {s.name for s in defs.sensors} == {
        *(
            f"{p}_{kind}"
            for p in PIPELINES
            for kind in ("landing_sensor", "drift_sensor", "canary")
        ),
        "dvc_recorder",
        "ml_platform_run_failure_alerts",
        "ml_platform_dead_run_monitor",
    }
    assert {s.name for s in defs.schedules} == {f"{p}_retrain_schedule" for p in PIPELINES}
    # The canary sensor runs by default only where the spec deploys by canary.
    canary = next(s for s in defs.sensors if s.name == "sales_forecast_canary")
    assert canary.default_status == dg.DefaultSensorStatus.STOPPED
    daily = {
        k.to_user_string()
        for k in graph.get_all_asset_keys()
        if isinstance(graph.get(k).partitions_def, dg.DailyPartitionsDefinition)
    }
    assert daily == {
        f"{p}/{s}"
        for p in PIPELINES
        for s in ("raw", "validated", "quarantine", "features", "predictions", "drift_report")
    }


IMPORT_AND_REPORT = (
    "import gc, os, sys; import ml_platform.definitions; "
    "print(sorted(os.listdir('.'))); print(gc.get_freeze_count(), len(gc.get_objects()))"
)


def import_definitions(tmp_path, **env: str) -> list[str]:
    """Import the code location in a fresh interpreter, as a run worker does; its stdout lines."""
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir(exist_ok=True)
    home.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-c", IMPORT_AND_REPORT],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "ML_PLATFORM_ROOT": str(root), "HOME": str(home), **env},
    ).stdout.splitlines()


def test_importing_definitions_touches_nothing_and_freezes_the_loaded_heap(tmp_path):
    listing, counts = import_definitions(tmp_path)[-2:]
    assert listing == "[]", "importing definitions must not create files (MLflow DB, state dirs)"
    frozen, tracked = map(int, counts.split())
    # Full collections walk only the tracked objects: the import-time heap is out of their way.
    assert frozen > 100_000
    assert tracked < frozen / 10


def test_freezing_the_loaded_heap_can_be_turned_off(tmp_path):
    frozen, tracked = map(int, import_definitions(tmp_path, ML_PLATFORM_GC_FREEZE="0")[-1].split())
    assert frozen == 0
    assert tracked > 100_000


def test_dagster_cli_validates_the_definitions():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-m",
            "ml_platform.definitions",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


DAGSTER_CLI = [sys.executable, "-m", "dagster"]
RAW_AND_CHILDREN = "sales_forecast/raw+"
MODULE = "ml_platform.definitions"


def test_dagster_selection_syntax_works_beside_dvc():
    """Dagster's `--select` parser and DVC's hydra share antlr4: the pinned versions must agree."""
    result = subprocess.run(
        [*DAGSTER_CLI, "asset", "list", "-m", MODULE, "--select", RAW_AND_CHILDREN],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    listed = set(result.stdout.split())
    assert listed == {"sales_forecast/raw", "sales_forecast/validated", "sales_forecast/quarantine"}


def test_dvc_set_param_overrides_our_params_file(tmp_path):
    """`dvc exp run --set-param` parses overrides with hydra; it must still work with that pin."""
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", params)
    apply_overrides(params, ["sales_forecast.model.max_iter=120"])
    model = yaml.safe_load(params.read_text())["sales_forecast"]["model"]
    assert model["max_iter"] == 120
    assert model["learning_rate"] == 0.05  # the rest of the file is untouched
