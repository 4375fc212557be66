"""A backfill survives bad days: the good days are ingested, each bad day fails once, by name."""

from __future__ import annotations

import dagster as dg
import pytest

from ml_platform.automation.alerts import alerts_path
from ml_platform.core.json_lines import read_json_lines
from ml_platform.runs import contiguous_spans, materialize
from ml_platform_tests.conftest import day, generate

pytestmark = pytest.mark.slow
INGEST = ["raw", "validated", "quarantine", "features"]


def test_contiguous_spans():
    days = ["2024-01-01", "2024-01-02", "2024-01-04", "2024-01-05", "2024-01-07"]
    assert contiguous_spans(days) == [
        ("2024-01-01", "2024-01-02"),
        ("2024-01-04", "2024-01-05"),
        ("2024-01-07", "2024-01-07"),
    ]
    assert contiguous_spans([]) == []


def test_range_with_broken_days_ingests_the_good_ones(isolated_env, spec, capsys):
    root = isolated_env
    generate(root, spec, stores=3, days=30)
    landing = root / spec.landing.directory
    missing_column, unreadable = day(9, spec), day(20, spec)
    (landing / f"{missing_column}.csv").write_text("date,store_id\n" + f"{missing_column},S0001\n")
    (landing / f"{unreadable}.csv").write_bytes(b"\xff\xfe\x00garbage")

    assert materialize(root, spec, INGEST) is False

    out = capsys.readouterr().out
    assert f"28 of 30 days ingested; 2 failed: {missing_column}, {unreadable}" in out
    assert out.count("missing required columns") == 1  # each day's message once
    instance = dg.DagsterInstance.get()
    done = instance.get_materialized_partitions(dg.AssetKey([spec.name, "validated"]))
    expected = {day(i, spec) for i in range(30)} - {missing_column, unreadable}
    assert done == expected
    features = instance.get_materialized_partitions(dg.AssetKey([spec.name, "features"]))
    assert features == expected
    assert (landing / f"{unreadable}.csv").read_bytes() == b"\xff\xfe\x00garbage"  # untouched

    # A failed CLI run raises the same alert a daemon-launched one does, once per run.
    alerts = read_json_lines(alerts_path(root))
    failed = [r for r in instance.get_run_records() if r.dagster_run.status.value == "FAILURE"]
    assert sorted(a["run_id"] for a in alerts) == sorted(r.dagster_run.run_id for r in failed)
    reasons = " ".join(a["reason"] for a in alerts)
    assert unreadable in reasons and "missing required columns" in reasons
