"""`ml-platform …`: the command line front door (generate, demo, drift, …).

Heavy imports happen inside the commands so `ml-platform --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import yaml

from ml_platform.specs import SPEC_DIR, PipelineSpec, SpecError, load_spec


def _spec(name: str, root: Path) -> PipelineSpec:
    path = SPEC_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))
        raise SpecError(f"unknown pipeline {name!r}; known pipelines: {known}")
    return load_spec(path, root)


def _generate_defaults(root: Path, pipeline: str) -> dict:
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text()) if params_path.exists() else {}
    return dict(((params or {}).get(pipeline) or {}).get("generate") or {})


def _progress(label: str):
    started = time.monotonic()

    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            rate = done / max(time.monotonic() - started, 1e-9)
            print(f"  {label}: {done}/{total} ({rate:,.0f}/s)", flush=True)

    return report


def cmd_generate(args: argparse.Namespace) -> int:
    from ml_platform.core.datagen import GeneratorConfig, write_landing_files

    root = Path.cwd()
    spec = _spec(args.pipeline, root)
    defaults = _generate_defaults(root, spec.name)
    config = GeneratorConfig(
        stores=args.stores or defaults.get("stores", 20),
        products=args.products or defaults.get("products", 1),
        start=args.start or spec.landing.start_date,
        days=args.days or defaults.get("days", 730),
        seed=args.seed if args.seed is not None else defaults.get("seed", 7),
        holidays=tuple(spec.features.holidays),
        shift_from=args.shift_from,
        shift_strength=args.shift_strength,
        corrupt_fraction=args.corrupt_fraction,
    )
    directory = Path(args.out) if args.out else root / spec.landing.directory
    written = write_landing_files(
        config, directory, append=args.append, progress=_progress("landing files")
    )
    if written:
        print(
            f"wrote {len(written)} files to {directory} ({written[0].stem} .. {written[-1].stem})"
        )
    else:
        print(f"nothing written to {directory}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ml_platform.demo import run_demo

    return run_demo(Path.cwd(), args.pipeline, regenerate=args.regenerate)


def cmd_materialize(args: argparse.Namespace) -> int:
    """What `dvc repro` stages call: materialise assets as the UI would, over all landing days."""
    from ml_platform.demo import _record_in_dvc, materialize

    root = Path.cwd()
    ok = materialize(root, _spec(args.pipeline, root), args.stages, partition=args.partition)
    if ok and args.record:
        _record_in_dvc(root, "")
    return 0 if ok else 1


def cmd_history(args: argparse.Namespace) -> int:
    from ml_platform.lineage import format_history, history

    root = Path.cwd()
    print(format_history(history(root, _spec(args.pipeline, root))))
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

    root = Path.cwd()
    home = ensure_dagster_home(root)
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
        "workspace.yaml",
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
    gen.add_argument("--stores", type=int)
    gen.add_argument("--products", type=int)
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
    demo.add_argument("--pipeline", default="sales_forecast")
    demo.add_argument("--regenerate", action="store_true", help="generate data even if present")
    demo.set_defaults(func=cmd_demo)

    mat = sub.add_parser("materialize", help="materialise stages of a pipeline (one run)")
    mat.add_argument("pipeline")
    mat.add_argument("stages", nargs="+", help="e.g. raw validated quarantine features")
    mat.add_argument("--partition", help="one day (YYYY-MM-DD); default: every landing day")
    mat.add_argument("--record", action="store_true", help="dvc commit + push afterwards")
    mat.set_defaults(func=cmd_materialize)

    hist = sub.add_parser("history", help="the champion timeline from the audit trail")
    hist.add_argument("pipeline")
    hist.set_defaults(func=cmd_history)

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

    sub.add_parser("drift", help="compare two CSV/parquet files for drift", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
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
