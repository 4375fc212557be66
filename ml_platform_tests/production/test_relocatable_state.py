"""A project folder that is moved or copied writes only into itself (issue: absolute base_dir)."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest

from ml_platform.instance import (
    DAGSTER_YAML,
    RelocatedInstanceError,
    dagster_yaml,
    ensure_dagster_home,
)
from ml_platform.runs import materialize
from ml_platform_tests.conftest import activated, day, generate, make_platform_root

pytestmark = pytest.mark.slow
INGEST = ["raw", "validated", "quarantine", "features"]


def _files(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_copied_project_writes_only_into_the_copy(tmp_path, spec):
    original = make_platform_root(tmp_path / "original")
    generate(original, spec, stores=2, days=4)
    with activated(original):
        assert materialize(original, spec, INGEST, partition=day(0, spec))
    config = (original / ".ml_platform" / "dagster_home" / "dagster.yaml").read_text()
    assert str(tmp_path) not in config  # no absolute path in generated config

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(original / "data" / spec.name)  # so the copy cannot read the old data either
    before = _files(original)
    with activated(copy):
        assert materialize(copy, spec, INGEST, partition=day(1, spec))
        instance = dg.DagsterInstance.get()
        done = instance.get_materialized_partitions(dg.AssetKey([spec.name, "raw"]))
        assert done == {day(0, spec), day(1, spec)}  # the copied history, plus the new day
        assert len(instance.get_runs()) == 2
        instance.dispose()
    assert _files(original) == before  # not one file in the old folder written or touched


def test_config_from_an_earlier_version_is_rewritten_and_a_foreign_one_refused(tmp_path):
    root = make_platform_root(tmp_path / "moved")
    home = root / ".ml_platform" / "dagster_home"
    home.mkdir(parents=True)
    old_home = tmp_path / "before_the_move" / ".ml_platform" / "dagster_home"
    (home / "dagster.yaml").write_text(dagster_yaml(old_home))  # as earlier versions wrote it
    with activated(root):
        ensure_dagster_home(root)
        assert (home / "dagster.yaml").read_text() == dagster_yaml()
        assert str(tmp_path) not in dagster_yaml()

        edited = DAGSTER_YAML.format(runs_dir=f'"{old_home}/history/runs"') + "# edited\n"
        (home / "dagster.yaml").write_text(edited)
        with pytest.raises(RelocatedInstanceError, match="moved or copied"):
            ensure_dagster_home(root)
        assert (home / "dagster.yaml").read_text() == edited  # left for its owner to fix
