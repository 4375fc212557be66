"""ml_platform: production-grade ML pipelines as Dagster software-defined assets."""

import os

# OpenMP threads in sklearn's HistGradientBoosting spin-wait by default; on a busy 2-core machine
# that turned a 0.3 s fit into minutes. Passive waiting must be set before OpenMP loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
