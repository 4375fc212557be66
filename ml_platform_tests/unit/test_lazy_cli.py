"""Commands that do not need the Dagster graph never build it (issue 13: lazy definitions).

One fresh interpreter runs the commands one after another, as a user would, and reports the
modules loaded after each: a module-level import of the definitions anywhere on a command's path
would show up here. Cheapest first, so each check also covers the commands before it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import contextlib, io, json, sys
from ml_platform.cli import main

def step(name, argv=None, modules=()):
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv) if argv else 0
    for module in modules:
        __import__(module)
    print(json.dumps({"step": name, "code": code, "modules": sorted(sys.modules)}))

step("spec schema", ["spec", "schema"])
step("drift", ["drift", "ref.csv", "cur.csv"])
step("serve", modules=["ml_platform.serving.server", "ml_platform.serving.app"])
step("history", ["history", "customer_churn"])
"""
GRAPH = (
    "ml_platform.definitions",
    "ml_platform.assemble",
    "ml_platform.assets",
    "ml_platform.automation",
)


@pytest.mark.slow  # a whole interpreter that imports dagster and mlflow: ~10 s on an idle machine
def test_commands_without_the_graph_never_import_it(tmp_path: Path):
    frame = "a,b\n" + "\n".join(f"{i % 7},{i % 3}" for i in range(200)) + "\n"
    (tmp_path / "ref.csv").write_text(frame)
    (tmp_path / "cur.csv").write_text(frame)
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "DAGSTER_HOME"}}
    env["ML_PLATFORM_ROOT"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    steps = {s["step"]: s for s in map(json.loads, done.stdout.splitlines())}
    assert list(steps) == ["spec schema", "drift", "serve", "history"]
    for name, step in steps.items():
        assert step["code"] == 0, name
        assert [m for m in step["modules"] if m.startswith(GRAPH)] == [], name
    # The science and serving paths load no Dagster at all; history reads the registry resource.
    for name in ("spec schema", "drift", "serve"):
        assert "dagster" not in steps[name]["modules"], name
    assert "ml_platform.serving.app" in steps["serve"]["modules"]
    assert "ml_platform.lineage" in steps["history"]["modules"]


def test_importing_the_package_sets_no_environment():
    """Our modules only; MLflow and others set variables of their own when imported."""
    probe = (
        "import json, os\n"
        "before = dict(os.environ)\n"
        "import ml_platform, ml_platform.cli, ml_platform.settings, ml_platform.names\n"
        "import ml_platform.layout, ml_platform.runs, ml_platform.demo, ml_platform.generate\n"
        "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
