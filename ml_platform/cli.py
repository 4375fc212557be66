"""`ml-platform …`: the command line front door (generate, demo, drift, …).

Heavy imports happen inside the commands so `ml-platform --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from ml_platform.layout import StateLayout
from ml_platform.specs import PipelineSpec, SpecError, load_spec


def _spec(name: str, root: Path) -> PipelineSpec:
    from ml_platform.settings import spec_dir_from_env
    from ml_platform.spec_checks import did_you_mean

    spec_dir = spec_dir_from_env()
    path = spec_dir / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in spec_dir.glob("*.yaml"))
        raise SpecError(f"unknown pipeline {name!r}{did_you_mean(name, known)}; known: {known}")
    return load_spec(path, root)


def cmd_generate(args: argparse.Namespace) -> int:
    from ml_platform.generate import generate_landing

    root = Path.cwd()
    generate_landing(
        root,
        _spec(args.pipeline, root),
        out=Path(args.out) if args.out else None,
        start=args.start,
        days=args.days,
        seed=args.seed,
        stores=args.stores,
        products=args.products,
        customers=args.customers,
        append=args.append,
        shift_from=args.shift_from,
        shift_strength=args.shift_strength,
        corrupt_fraction=args.corrupt_fraction,
    )
    return 0


def cmd_spec_validate(args: argparse.Namespace) -> int:
    """Load each spec as the platform will; exit 1 naming file and field on the first mistake."""
    from ml_platform.core.fit_check import check_by_fitting
    from ml_platform.settings import spec_dir_from_env
    from ml_platform.spec_checks import SpecCheckError
    from ml_platform.specs import load_spec

    root = Path.cwd()
    paths = [Path(p) for p in args.files] or sorted(spec_dir_from_env().glob("*.yaml"))
    if not paths:
        print(f"error: no pipeline specs in {spec_dir_from_env()}", file=sys.stderr)
        return 1
    failed = 0
    for path in paths:
        try:
            spec = load_spec(path, root)
            check_by_fitting(spec)
        except SpecCheckError as exc:
            failed += 1
            print(f"FAIL invalid pipeline spec {path}:\n  {exc}", file=sys.stderr)
        except SpecError as exc:
            failed += 1
            print(f"FAIL {exc}", file=sys.stderr)
        else:
            print(f"ok   {path}: {spec.name} ({spec.task}, {len(spec.feature_columns)} features)")
    return 1 if failed else 0


def cmd_spec_schema(args: argparse.Namespace) -> int:
    from ml_platform.scaffold import json_schema_text

    print(json_schema_text(), end="")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Regenerate workspace.yaml (every spec file, broken ones too, so the UI shows their error),
    dvc.yaml (every valid spec) and the spec's JSON Schema."""
    from ml_platform.scaffold import (
        REFERENCE_PATH,
        SCHEMA_PATH,
        dvc_yaml,
        json_schema_text,
        reference_markdown,
        workspace_yaml,
        write_atomically,
    )
    from ml_platform.settings import spec_dir_from_env
    from ml_platform.specs import load_specs_isolated

    root = Path.cwd()
    spec_dir = spec_dir_from_env()
    specs, errors = load_specs_isolated(spec_dir, root)
    for error in errors.values():
        print(f"warning: {error}", file=sys.stderr)
    files = {
        root / "workspace.yaml": workspace_yaml([p.stem for p in spec_dir.glob("*.yaml")]),
        root / "dvc.yaml": dvc_yaml(specs),
        root / SCHEMA_PATH: json_schema_text(),
        root / REFERENCE_PATH: reference_markdown(),
    }
    for path, text in files.items():
        state = "updated" if write_atomically(path, text) else "unchanged"
        print(f"{state:9} {path.relative_to(root)}")
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    """Scaffold a spec (and its place in workspace.yaml and dvc.yaml); never overwrite one."""
    import re

    from ml_platform.scaffold import spec_template
    from ml_platform.settings import spec_dir_from_env

    if not re.fullmatch(r"[a-z][a-z0-9_]{0,47}", args.name):
        raise SpecError(f"pipeline names are lower_snake_case (a-z, 0-9, _), got {args.name!r}")
    path = spec_dir_from_env() / f"{args.name}.yaml"
    if path.exists():
        raise SpecError(f"{path} already exists; edit it instead")
    path.write_text(spec_template(args.name, args.task))
    print(f"created {path}: fill in its columns, then `ml-platform spec validate {path}`")
    return cmd_sync(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from ml_platform.demo import run_demo

    return run_demo(Path.cwd(), args.pipeline, regenerate=args.regenerate)


def cmd_materialize(args: argparse.Namespace) -> int:
    """What `dvc repro` stages call: materialise assets as the UI would, over all landing days."""
    from ml_platform.runs import materialize, record_in_dvc

    root = Path.cwd()
    ok = materialize(root, _spec(args.pipeline, root), args.stages, partition=args.partition)
    if ok and args.record:
        record_in_dvc(root, "", [args.pipeline])
    return 0 if ok else 1


def cmd_history(args: argparse.Namespace) -> int:
    from ml_platform.lineage import format_history, history, outside_moves

    root = Path.cwd()
    spec = _spec(args.pipeline, root)
    print(format_history(history(root, spec, args.analyses), outside_moves(root, spec)))
    return 0


def cmd_canary(args: argparse.Namespace) -> int:
    """Operator controls of a canary release; each is recorded in the audit trail."""
    import json

    from ml_platform.automation.canary_sensor import alert_sink
    from ml_platform.lineage import ReleaseRefused, canary

    root = Path.cwd()
    spec = _spec(args.pipeline, root)
    try:
        result = canary(root, spec, args.action, args.version, args.reason, alert_sink(root))
    except (ReleaseRefused, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if isinstance(result, dict) else result)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from ml_platform.lineage import rollback

    root = Path.cwd()
    print(rollback(root, _spec(args.pipeline, root), args.to, args.reason))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    import json

    from ml_platform.lineage import reproduce

    root = Path.cwd()
    result = reproduce(root, _spec(args.pipeline, root), args.version)
    print(json.dumps(result, indent=2))
    return 0 if result["identical"] else 1


def cmd_dev(args: argparse.Namespace) -> int:
    """`dagster dev` with the embedded instance, bound to 127.0.0.1 unless told otherwise."""
    import os

    from ml_platform.instance import ensure_dagster_home
    from ml_platform.scaffold import workspace_yaml, write_atomically
    from ml_platform.settings import spec_dir_from_env

    root = Path.cwd()
    home = ensure_dagster_home(root)
    # One code location per spec file found now (broken ones too: the UI shows their error).
    workspace = StateLayout(root).workspace
    write_atomically(
        workspace, workspace_yaml([p.stem for p in spec_dir_from_env().glob("*.yaml")])
    )
    print(f"DAGSTER_HOME={home}; UI on http://{args.host}:{args.port}", flush=True)
    command = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-h",
        args.host,
        "-p",
        str(args.port),
        "-w",
        str(workspace),
    ]
    os.execvpe(command[0], command, {**os.environ, "ML_PLATFORM_ROOT": str(root)})
    return 0  # unreachable: exec replaces this process


def cmd_serve(args: argparse.Namespace) -> int:
    from ml_platform.serving.server import serve

    serve(Path.cwd(), args.host, args.port, args.workers, args.reload_seconds, args.access_log)
    return 0


def cmd_drift(argv: list[str]) -> int:
    from ml_platform.drift_cli import drift_command

    return drift_command(argv)


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {value!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml-platform", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write synthetic daily landing CSVs")
    gen.add_argument("--pipeline", default="sales_forecast")
    gen.add_argument("--stores", type=int, help="retail_sales generator")
    gen.add_argument("--products", type=int, help="retail_sales generator")
    gen.add_argument("--customers", type=int, help="customer_churn generator")
    gen.add_argument("--days", type=int)
    gen.add_argument("--start", type=_date)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--append", action="store_true", help="continue after the latest file")
    gen.add_argument("--shift-from", type=_date, help="inject a distribution shift from this day")
    gen.add_argument("--shift-strength", type=float, default=0.5)
    gen.add_argument("--corrupt-fraction", type=float, default=0.0)
    gen.add_argument("--out", help="landing folder (default: the spec's)")
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="generate data and materialise the whole graph")
    demo.add_argument(
        "--pipeline",
        action="append",
        help="repeatable; default: every pipeline with landing files or a data generator",
    )
    demo.add_argument("--regenerate", action="store_true", help="generate data even if present")
    demo.set_defaults(func=cmd_demo)

    mat = sub.add_parser("materialize", help="materialise stages of a pipeline (one run)")
    mat.add_argument("pipeline")
    mat.add_argument("stages", nargs="+", help="e.g. raw validated quarantine features")
    mat.add_argument("--partition", help="one day (YYYY-MM-DD); default: every landing day")
    mat.add_argument("--record", action="store_true", help="dvc commit + push afterwards")
    mat.set_defaults(func=cmd_materialize)

    hist = sub.add_parser("history", help="alias moves from the audit trail (and outside it)")
    hist.add_argument("pipeline")
    hist.add_argument("--analyses", action="store_true", help="every canary analysis too")
    hist.set_defaults(func=cmd_history)

    can = sub.add_parser("canary", help="status, start, pause, resume, abort or promote a canary")
    can.add_argument("action", choices=["status", "start", "pause", "resume", "abort", "promote"])
    can.add_argument("pipeline")
    can.add_argument("--version", help="model version (start: default the challenger)")
    can.add_argument("--reason", default="operator request")
    can.set_defaults(func=cmd_canary)

    back = sub.add_parser("rollback", help="move champion back to the previous (or a) version")
    back.add_argument("pipeline")
    back.add_argument("--to", help="model version (default: the `previous` alias)")
    back.add_argument("--reason", default="manual rollback")
    back.set_defaults(func=cmd_rollback)

    repro = sub.add_parser("reproduce", help="retrain a version from its recorded data")
    repro.add_argument("pipeline")
    repro.add_argument("--version", required=True)
    repro.set_defaults(func=cmd_reproduce)

    dev = sub.add_parser("dev", help="open the Dagster UI (webserver + daemon)")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(func=cmd_dev)

    srv = sub.add_parser("serve", help="real-time predictions over HTTP (champion + canary)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--workers", type=int, default=None, help="default: one per core")
    srv.add_argument("--reload-seconds", type=float, default=5.0, help="registry poll interval")
    srv.add_argument("--access-log", action="store_true", help="log every request (slower)")
    srv.set_defaults(func=cmd_serve)

    spec = sub.add_parser("spec", help="check pipeline specs, or print their JSON Schema")
    spec_sub = spec.add_subparsers(dest="spec_command", required=True)
    validate = spec_sub.add_parser("validate", help="load specs as the platform will (exit 1)")
    validate.add_argument("files", nargs="*", help="spec files (default: every spec)")
    validate.set_defaults(func=cmd_spec_validate)
    schema = spec_sub.add_parser("schema", help="print the spec's JSON Schema")
    schema.set_defaults(func=cmd_spec_schema)

    new = sub.add_parser("new", help="scaffold a pipeline spec and register it")
    new.add_argument("name")
    new.add_argument("--task", choices=["regression", "classification"], default="regression")
    new.set_defaults(func=cmd_new)

    sync = sub.add_parser("sync", help="regenerate workspace.yaml, dvc.yaml and the spec schema")
    sync.set_defaults(func=cmd_sync)

    sub.add_parser("drift", help="compare two CSV/parquet files for drift", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ml_platform.settings import use_passive_openmp

    use_passive_openmp()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["drift"]:
        return cmd_drift(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, ValueError, LookupError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
