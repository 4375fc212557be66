"""The code location `ml_platform`: every valid pipeline spec in one `Definitions` object.

Used by `dagster ... -m ml_platform.definitions` and `dg`; `workspace.yaml` loads one location per
pipeline instead (`ml_platform.locations`), so a broken spec stops only its own pipeline there.
Here a broken spec is logged and left out.
"""

from __future__ import annotations

# ruff: noqa: E402  (the OpenMP setting must come before any scikit-learn import)
from ml_platform.settings import use_passive_openmp

use_passive_openmp()  # before scikit-learn loads OpenMP: see its docstring

# Import order, for speed: skops (model loading) names each of scipy's ~230 ufuncs at import by
# scanning sys.modules, in import order, until it reaches scipy. scikit-learn (and with it scipy)
# is imported anyway; importing it here, before MLflow's ~1,500 modules, makes that scan about
# 0.7 s shorter in every run that loads a model (bench/README.md).
import sklearn  # noqa: F401  isort: skip

from ml_platform.assemble import build_definitions
from ml_platform.instance import freeze_loaded_heap
from ml_platform.settings import mlflow_uri, spec_dir_from_env

__all__ = ["build_definitions", "defs", "mlflow_uri", "spec_dir_from_env"]

defs = build_definitions()
freeze_loaded_heap()  # loaded once per process and kept for life: see its docstring
