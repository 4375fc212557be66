"""One Dagster code location per pipeline: `workspace.yaml` loads attribute NAME of this module.

Why per-pipeline locations: Dagster loads each code location in its own process and reports a
location that fails to load in the UI (Deployment → Code locations) with its error, while every
other location keeps loading, running, scheduling and sensing. So a broken spec stops only its
own pipeline, and its owner sees why where they already look. Each location is built on first
access from the spec of the same name, nothing else.
"""

from __future__ import annotations

import dagster as dg


def __getattr__(name: str) -> dg.Definitions:
    if name.startswith("_"):
        raise AttributeError(name)
    from ml_platform.settings import use_passive_openmp

    use_passive_openmp()  # before scikit-learn loads OpenMP
    import sklearn  # noqa: F401  first, as in ml_platform.definitions (skops import scan)

    from ml_platform.assemble import build_definitions
    from ml_platform.instance import freeze_loaded_heap
    from ml_platform.settings import default_root, spec_dir_from_env
    from ml_platform.specs import SpecError, load_spec

    root = default_root()
    path = spec_dir_from_env() / f"{name}.yaml"
    if not path.is_file():
        raise AttributeError(f"no pipeline spec {path} for code location {name!r}")
    try:
        spec = load_spec(path, root)
    except SpecError as exc:  # shown as the location's load error in the UI
        raise dg.DagsterInvariantViolationError(str(exc)) from None
    defs = build_definitions(root, specs=[spec], location=name)
    globals()[name] = defs
    freeze_loaded_heap()
    return defs
