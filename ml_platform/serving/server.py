"""Start the serving app under uvicorn with settings that are right for serving by default."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ml_platform.layout import StateLayout
from ml_platform.settings import PROMETHEUS_MULTIPROC_ENV, SERVE_RELOAD_SECONDS_ENV

KEEP_ALIVE_SECONDS = 5


def default_workers() -> int:
    """One worker per core: each is single-threaded (native pools are limited to 1 thread)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def serve(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    reload_seconds: float = 5.0,
    access_log: bool = False,
) -> None:
    """Run until interrupted. Workers read their settings from the environment set here."""
    import uvicorn

    workers = workers or default_workers()
    metrics_dir = StateLayout(root).prometheus(port)
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters start at zero with each server
    metrics_dir.mkdir(parents=True)
    os.environ.update(
        {
            "ML_PLATFORM_ROOT": str(Path(root).resolve()),
            PROMETHEUS_MULTIPROC_ENV: str(metrics_dir),
            SERVE_RELOAD_SECONDS_ENV: str(reload_seconds),
            # Set before the workers start so OpenMP/BLAS never size their pools to all cores.
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
    )
    print(f"serving on http://{host}:{port} with {workers} worker(s)", flush=True)
    uvicorn.run(
        "ml_platform.serving.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        log_level="info",
        backlog=2048,
        # An idle keep-alive connection is closed after this; a /predict body that trickles in
        # is cut by the app (ML_PLATFORM_SERVE_BODY_TIMEOUT_SECONDS, 408). uvicorn has no
        # timeout for reading the request line and headers.
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
