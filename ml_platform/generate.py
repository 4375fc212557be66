"""Synthetic landing files for a pipeline whose spec names a generator.

`ml-platform generate` and `ml-platform demo` both call `generate_landing`, so the demo does not
go through the command line to make its data.
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import yaml

from ml_platform.specs import PipelineSpec, SpecError


def generate_landing(
    root: Path,
    spec: PipelineSpec,
    *,
    out: Path | None = None,
    start: date | None = None,
    days: int | None = None,
    seed: int | None = None,
    stores: int | None = None,
    products: int | None = None,
    customers: int | None = None,
    append: bool = False,
    shift_from: date | None = None,
    shift_strength: float = 0.5,
    corrupt_fraction: float = 0.0,
) -> list[Path]:
    """Write daily landing CSVs; unset sizes come from `params.yaml`, then built-in defaults."""
    if spec.landing.generator is None:
        raise SpecError(
            f"pipeline {spec.name!r} has no synthetic data generator (landing.generator); "
            f"put its daily CSV files into {spec.landing.directory}/YYYY-MM-DD.csv instead"
        )
    defaults = _generate_defaults(root, spec.name)
    directory = Path(out) if out else root / spec.landing.directory
    common = {
        "start": start or spec.landing.start_date,
        "days": days or defaults.get("days", 730),
        "seed": seed if seed is not None else defaults.get("seed", 7),
        "shift_from": shift_from,
        "shift_strength": shift_strength,
        "corrupt_fraction": corrupt_fraction,
    }
    if spec.landing.generator == "customer_churn":
        from ml_platform.core import datagen_churn as generator

        config = generator.ChurnConfig(
            customers=customers or defaults.get("customers", 300), **common
        )
    else:
        from ml_platform.core import datagen as generator

        config = generator.GeneratorConfig(
            stores=stores or defaults.get("stores", 20),
            products=products or defaults.get("products", 1),
            holidays=tuple(h for h in spec.features.holidays if len(h) == 5),
            **common,
        )
    written = generator.write_landing_files(
        config, directory, append=append, progress=_progress("landing files")
    )
    if written:
        print(
            f"wrote {len(written)} files to {directory} ({written[0].stem} .. {written[-1].stem})"
        )
    else:
        print(f"nothing written to {directory}")
    return written


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
