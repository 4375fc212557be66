"""Files that follow the specs stay in sync, and `ml-platform new` scaffolds a spec that loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ml_platform import scaffold
from ml_platform.cli import main
from ml_platform.specs import SPEC_DIR, load_spec, load_specs

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("path", "render"),
    [
        ("workspace.yaml", lambda specs: scaffold.workspace_yaml([s.name for s in specs])),
        ("dvc.yaml", scaffold.dvc_yaml),
        (str(scaffold.SCHEMA_PATH), lambda specs: scaffold.json_schema_text()),
        (str(scaffold.REFERENCE_PATH), lambda specs: scaffold.reference_markdown()),
    ],
)
def test_committed_files_match_the_specs(path, render):
    """Run `ml-platform sync` when this fails."""
    specs = load_specs(SPEC_DIR, REPO_ROOT)
    assert (REPO_ROOT / path).read_text() == render(specs), f"{path} is stale: ml-platform sync"


def test_every_spec_is_its_own_code_location():
    workspace = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())
    locations = {e["python_module"]["location_name"] for e in workspace["load_from"]}
    assert locations == {p.stem for p in SPEC_DIR.glob("*.yaml")}
    assert len(locations) >= 2


def test_dvc_stages_exist_for_every_pipeline_with_its_params():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    for spec in load_specs(SPEC_DIR, REPO_ROOT):
        for stage in ("validated", "features", "training_set", "model"):
            assert f"{spec.name}_{stage}" in stages
        assert stages[f"{spec.name}_model"]["params"] == [f"{spec.name}.model"]
        assert spec.name in stages[f"{spec.name}_validated"]["cmd"]


def test_json_schema_accepts_the_shipped_specs_and_names_every_field():
    schema = scaffold.json_schema()
    assert set(schema["properties"]) >= {"name", "task", "landing", "features", "model"}
    assert schema["properties"]["task"]["enum"] == ["regression", "classification"]
    json.dumps(schema)  # serialisable as is
    reference = scaffold.reference_markdown()
    for field in ("features.categorical", "model.prediction_min", "contract.columns.<name>.dtype"):
        assert f"`{field}`" in reference


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_new_scaffolds_a_spec_that_validates_and_registers_it(tmp_path, monkeypatch, capsys, task):
    spec_dir = tmp_path / "specs"
    shutil.copytree(SPEC_DIR, spec_dir)
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.setenv("ML_PLATFORM_SPEC_DIR", str(spec_dir))
    monkeypatch.chdir(tmp_path)
    assert main(["new", "bike_rentals", "--task", task]) == 0
    spec = load_spec(spec_dir / "bike_rentals.yaml", tmp_path)
    assert spec.task == task
    workspace = (tmp_path / "workspace.yaml").read_text()
    assert "attribute: bike_rentals" in workspace
    assert "bike_rentals_model" in (tmp_path / "dvc.yaml").read_text()
    assert main(["spec", "validate"]) == 0
    assert main(["new", "bike_rentals"]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
    assert main(["new", "Bad-Name"]) == 2
