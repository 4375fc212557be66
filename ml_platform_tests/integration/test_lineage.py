"""Real DVC in a temporary git repo: one hash everywhere, reproduce, rollback, audit trail."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from ml_platform.core.datagen_churn import ChurnConfig
from ml_platform.core.datagen_churn import write_landing_files as write_churn_files
from ml_platform.demo import run_demo
from ml_platform.lineage import DvcError, format_history, history, reproduce, rollback
from ml_platform.resources.dvc import DvcLedger
from ml_platform.specs import SPEC_DIR, load_spec
from ml_platform_tests.conftest import (
    REPO_ROOT,
    activated,
    generate,
    make_platform_root,
    registry_for,
)

pytestmark = pytest.mark.slow
DVC = str(Path(sys.executable).with_name("dvc"))


def sh(root: Path, *command: str) -> str:
    return subprocess.run(command, cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory: pytest.TempPathFactory, spec) -> Iterator[Path]:
    """A git + DVC project taken through the demo once; the tests below run in file order."""
    root = make_platform_root(tmp_path_factory.mktemp("dvc") / "project")
    with activated(root):
        sh(root, "git", "init", "-q")
        sh(root, DVC, "init", "-q")
        shutil.copy(REPO_ROOT / ".dvc" / "config", root / ".dvc" / "config")
        shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
        for folder in ("ml_platform/core", "ml_platform/pipelines"):  # stage deps, as in the repo
            shutil.copytree(REPO_ROOT / folder, root / folder, dirs_exist_ok=True)
        generate(root, spec, stores=4, days=100, seed=9)
        churn = load_spec(SPEC_DIR / "customer_churn.yaml", root)
        config = ChurnConfig(customers=200, days=100, seed=9)
        write_churn_files(config, root / churn.landing.directory)
        assert run_demo(root, [spec.name, churn.name]) == 0
        yield root


def test_dvc_records_the_same_hashes_dagster_reports(dvc_project, spec):
    root = dvc_project

    stages = DvcLedger(root).stages_of([spec.name])
    assert len(stages) == 4
    assert json.loads(sh(root, DVC, "status", "--json", *stages)) == {}
    lock = (root / "dvc.lock").read_text()
    assert "data/sales_forecast/validated" in lock
    partition = "2024-03-01"
    instance = dg.DagsterInstance.get()
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(dg.AssetKey([spec.name, "validated"]), asset_partitions=[partition]),
        limit=1,
    ).records[0]
    dagster_md5 = record.asset_materialization.metadata["md5"].value
    manifest = _dir_manifest(root, "data/sales_forecast/validated")
    assert manifest[f"{partition}.parquet"] == dagster_md5

    # The champion's tags lead back to its training set, which reproduces the same MAE.
    champion = registry_for(root).alias_version(spec.name, "champion")
    result = reproduce(root, spec, champion.version)
    assert result["identical"], result
    assert (root / ".ml_platform" / "dvc_remote").is_dir()

    # A corrupted cache file is reported, never silently used.
    cached = DvcLedger(root).cache_path(champion.tags["training_set_md5"])
    cached.chmod(0o644)
    cached.write_bytes(b"not the training set")
    with pytest.raises(DvcError, match="corrupted"):
        reproduce(root, spec, champion.version)
    cached.unlink()
    remote = root / ".ml_platform" / "dvc_remote" / cached.relative_to(root / ".dvc" / "cache")
    remote.unlink()
    with pytest.raises(DvcError, match="neither the DVC cache"):
        reproduce(root, spec, champion.version)


def test_a_classifier_reproduces_its_log_loss_from_dvc(dvc_project):
    root = dvc_project
    churn = load_spec(SPEC_DIR / "customer_churn.yaml", root)
    stages = DvcLedger(root).stages_of([churn.name])
    assert json.loads(sh(root, DVC, "status", "--json", *stages)) == {}
    champion = registry_for(root).alias_version(churn.name, "champion")
    assert champion is not None
    result = reproduce(root, churn, champion.version)
    assert result["identical"], result
    assert result["holdout_log_loss_recorded"] == result["holdout_log_loss_reproduced"]


def test_rollback_is_recorded_once_and_idempotent(dvc_project, spec):
    root = dvc_project
    generate(root, spec, stores=4, days=20, seed=9)  # new data → a new version
    registry = registry_for(root)
    first = registry.alias_version(spec.name, "champion").version
    from ml_platform.runs import materialize

    assert materialize(root, spec, ["raw", "validated", "quarantine", "features"])
    assert materialize(root, spec, ["training_set", "challenger", "promotion"])
    newest = registry.alias_version(spec.name, "challenger").version
    assert newest != first
    registry.set_alias(spec.name, "champion", newest)  # as a canary success would
    entries_before = len(history(root, spec))

    message = rollback(root, spec, first, "bad canary")
    again = rollback(root, spec, first, "bad canary")

    assert f"v{newest} → v{first}" in message
    assert "nothing to do" in again
    entries = history(root, spec)
    assert len(entries) == entries_before + 1
    assert entries[-1]["from_version"] == str(newest)
    assert entries[-1]["to_version"] == str(first)
    assert registry.alias_version(spec.name, "champion").version == first
    assert "rollback: bad canary" in format_history(entries)


def _dir_manifest(root: Path, out: str) -> dict[str, str]:
    import yaml

    lock = yaml.safe_load((root / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        for entry in stage.get("outs", []):
            if entry["path"] == out:
                digest = entry["md5"]
                path = DvcLedger(root).cache_path(digest)
                return {item["relpath"]: item["md5"] for item in json.loads(path.read_text())}
    raise AssertionError(f"{out} not in dvc.lock")


def test_parallel_dvc_calls_are_serialised_not_failed(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path / "repo"
    root.mkdir()
    sh(root, "git", "init", "-q")
    sh(root, DVC, "init", "-q")
    (root / "data.txt").write_text("hello\n")
    (root / "dvc.yaml").write_text(
        "stages:\n  copy:\n    cmd: cp data.txt out.txt\n"
        "    deps: [data.txt]\n    outs: [out.txt]\n"
    )
    (root / "out.txt").write_text("hello\n")
    ledger = DvcLedger(root)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: ledger.run("commit", "--force", "--quiet"), range(4)))
    assert len(results) == 4
    assert json.loads(ledger.run("status", "--json")) == {}
