"""A code location holding only the real `<pipeline>_canary` sensor, for the daemon canary test.

The spec comes from `ML_PLATFORM_SPEC_DIR` (short intervals); landing, drift and training stay
out, so the daemon spends the test's CPU on the canary and nothing else.
"""

from __future__ import annotations

import dagster as dg

from ml_platform.automation.canary_sensor import build_canary_sensor
from ml_platform.settings import default_root, spec_dir_from_env
from ml_platform.specs import load_spec

spec = load_spec(spec_dir_from_env() / "sales_forecast.yaml", default_root())
defs = dg.Definitions(sensors=[build_canary_sensor(spec)])
