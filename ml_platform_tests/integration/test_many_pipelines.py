"""Three pipelines side by side (two regressions, one classifier) and a broken fourth.

Every name Dagster, MLflow and the state folders see carries the pipeline's name; the broken
spec stops only itself, in `ml_platform.definitions` and in its own code location.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ml_platform.core import datagen_churn
from ml_platform.specs import SPEC_DIR, load_spec
from ml_platform_tests.conftest import activated, generate, make_platform_root, registry_for

pytestmark = pytest.mark.slow

# A third team: next-day minutes per customer, a regression with a categorical feature and an
# estimator that cannot take NaN (so the saved pipeline imputes), on the churn team's files.
CUSTOMER_MINUTES = {
    "name": "customer_minutes",
    "task": "regression",
    "landing": {"directory": "data/landing/customer_minutes", "start_date": "2024-01-01"},
    "entity_keys": ["customer_id"],
    "timestamp": "date",
    "target": "minutes_used",
    "contract": {
        "columns": {
            "date": {"dtype": "date"},
            "customer_id": {"dtype": "str", "pattern": "^C\\d{6}$"},
            "plan": {"dtype": "str"},
            "region": {"dtype": "str"},
            "tenure_days": {"dtype": "int"},
            "sessions": {"dtype": "int", "ge": 0},
            "minutes_used": {"dtype": "float", "ge": 0},
            "support_tickets": {"dtype": "int"},
            "payment_failures": {"dtype": "int", "nullable": True},
            "monthly_fee": {"dtype": "float"},
            "churned": {"dtype": "int"},
        },
        "unique": ["date", "customer_id"],
    },
    "features": {
        "lags": [1, 7],
        "rolling_means": [7],
        "passthrough": ["payment_failures"],
        "categorical": ["plan"],
    },
    "model": {
        "estimator": "sklearn.linear_model.Ridge",
        "params": {"alpha": 1.0},
        "training_window_days": 60,
        "holdout_days": 14,
        "prediction_min": 0,
    },
    "promotion": {"baseline_seasonal_period_days": 7, "min_relative_improvement": 0.0},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_platform_root(tmp_path_factory.mktemp("many") / "project")
    spec_dir = root / "specs"
    spec_dir.mkdir()
    for name in ("sales_forecast", "customer_churn"):
        raw = yaml.safe_load((SPEC_DIR / f"{name}.yaml").read_text())
        raw["model"]["training_window_days"] = 60
        raw["model"]["holdout_days"] = 14
        (spec_dir / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    (spec_dir / "customer_minutes.yaml").write_text(yaml.safe_dump(CUSTOMER_MINUTES))
    broken = {**CUSTOMER_MINUTES, "name": "broken_team", "target": "minutes_usd"}
    (spec_dir / "broken_team.yaml").write_text(yaml.safe_dump(broken))
    return root


@pytest.fixture(scope="module")
def trained(project: Path) -> Path:
    from ml_platform.demo import run_demo

    spec_dir = project / "specs"
    with activated(project), pytest.MonkeyPatch.context() as patch:
        patch.setenv("ML_PLATFORM_SPEC_DIR", str(spec_dir))
        generate(project, load_spec(spec_dir / "sales_forecast.yaml", project), days=110)
        for name in ("customer_churn", "customer_minutes"):
            spec = load_spec(spec_dir / f"{name}.yaml", project)
            config = datagen_churn.ChurnConfig(customers=200, days=110, seed=3)
            datagen_churn.write_landing_files(config, project / spec.landing.directory)
        assert run_demo(project, ["sales_forecast", "customer_churn", "customer_minutes"]) == 0
    return project


def test_definitions_hold_every_valid_pipeline_and_log_the_broken_one(project, caplog):
    from ml_platform.assemble import build_definitions

    with activated(project), caplog.at_level("ERROR", logger="ml_platform"):
        defs = build_definitions(project, project / "specs")
    groups = {key.path[0] for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert groups == {"sales_forecast", "customer_churn", "customer_minutes"}
    assert "broken_team" in caplog.text and "did you mean 'minutes_used'" in caplog.text
    jobs = [job.name for job in defs.resolve_all_job_defs()]
    assert len(jobs) == len(set(jobs))
    ops = [node.name for job in defs.resolve_all_job_defs() for node in job.graph.nodes]
    validated_ops = {op for op in ops if op.endswith("__validated")}
    assert validated_ops == {f"{g}__validated" for g in groups}
    sensors = [s.name for s in defs.sensors]
    assert len(sensors) == len(set(sensors))
    for group in groups:
        assert {f"{group}_landing_sensor", f"{group}_drift_sensor"} <= set(sensors)


def test_each_pipeline_is_its_own_code_location_and_a_broken_one_fails_alone(project, monkeypatch):
    monkeypatch.setenv("ML_PLATFORM_SPEC_DIR", str(project / "specs"))
    monkeypatch.setenv("ML_PLATFORM_ROOT", str(project))
    locations = importlib.reload(importlib.import_module("ml_platform.locations"))
    with pytest.raises(dg.DagsterInvariantViolationError, match="minutes_usd"):
        _ = locations.broken_team
    churn = locations.customer_churn
    keys = churn.resolve_asset_graph().get_all_asset_keys()
    assert {k.path[0] for k in keys} == {"customer_churn"}
    names = [*(s.name for s in churn.sensors), *(s.name for s in churn.schedules)]
    assert names and all(n.startswith("customer_churn_") for n in names), names
    with pytest.raises(AttributeError):
        _ = locations.no_such_pipeline


def test_three_pipelines_each_promote_a_champion_and_report_drift(trained):
    with activated(trained):
        registry = registry_for(trained)
        instance = dg.DagsterInstance.get()
        for name in ("sales_forecast", "customer_churn", "customer_minutes"):
            champion = registry.alias_version(name, "champion")
            assert champion is not None, name
            assert champion.tags["task"] in ("regression", "classification")
            report = instance.get_latest_materialization_event(dg.AssetKey([name, "drift_report"]))
            assert report is not None, name
            assert (trained / ".ml_platform" / "audit" / f"{name}.jsonl").exists()
            assert any((trained / "data" / name / "predictions").glob("*.parquet"))


def test_the_classifier_records_classification_evidence(trained):
    with activated(trained):
        champion = registry_for(trained).alias_version("customer_churn", "champion")
        for tag in ("holdout_log_loss", "holdout_roc_auc", "holdout_brier", "holdout_accuracy"):
            assert 0 <= float(champion.tags[tag]) <= 1, tag
        event = dg.DagsterInstance.get().get_latest_materialization_event(
            dg.AssetKey(["customer_churn", "promotion"])
        )
        meta = event.asset_materialization.metadata
        assert meta["loss"].value == "log_loss"
        assert meta["log_loss_challenger"].value < meta["log_loss_baseline"].value
        report = dg.DagsterInstance.get().get_latest_materialization_event(
            dg.AssetKey(["customer_churn", "drift_report"])
        )
        assert "concept_log_loss_ratio" in report.asset_materialization.metadata
    predictions = sorted((trained / "data" / "customer_churn" / "predictions").glob("*.parquet"))
    import pandas as pd

    frame = pd.read_parquet(predictions[-1])
    assert frame["prediction"].between(0, 1).all()
    assert set(frame["predicted_class"].unique()) <= {0, 1}


def test_spec_validate_names_the_broken_file_and_exits_1(project, tmp_path):
    import subprocess
    import sys

    env = {"ML_PLATFORM_SPEC_DIR": str(project / "specs"), "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "ml_platform.cli", "spec", "validate"]
    done = subprocess.run(cli, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "broken_team.yaml" in done.stderr and "did you mean 'minutes_used'" in done.stderr
    assert done.stdout.count("ok ") == 3
    assert "Traceback" not in done.stderr
    good = project / "specs" / "customer_churn.yaml"
    only = subprocess.run(
        [*cli, str(good)], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )
    assert only.returncode == 0, only.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_dagster_itself_reports_the_broken_location_and_loads_the_other(tmp_path):
    """What the UI's Deployment page shows: `dagster definitions validate` over the workspace."""
    import subprocess
    import sys

    from ml_platform.scaffold import workspace_yaml

    specs = tmp_path / "specs"
    specs.mkdir()
    raw = yaml.safe_load((SPEC_DIR / "customer_churn.yaml").read_text())
    raw["model"]["params_file"] = None
    (specs / "customer_churn.yaml").write_text(yaml.safe_dump(raw))
    raw.update(name="broken_team", target="churnd")
    (specs / "broken_team.yaml").write_text(yaml.safe_dump(raw))
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(workspace_yaml(["customer_churn", "broken_team"]))
    env = {
        **os.environ,
        "ML_PLATFORM_SPEC_DIR": str(specs),
        "ML_PLATFORM_ROOT": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    (tmp_path / "dagster_home").mkdir()
    dagster = str(Path(sys.executable).with_name("dagster"))
    done = subprocess.run(
        [dagster, "definitions", "validate", "-w", str(workspace)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Validation failed for code location broken_team" in output
    assert "target: column 'churnd' is not declared" in output
    assert "did you mean 'churned'" in output
    assert "Validation successful for code location customer_churn" in output
