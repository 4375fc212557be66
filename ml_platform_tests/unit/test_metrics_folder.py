"""Serving metrics never fail a request, even when their multiprocess folder is removed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE = """
import shutil, sys
from ml_platform.serving.metrics import ServingMetrics

folder = sys.argv[1]
shutil.rmtree(folder)                      # a cleanup under a running server, then this worker
metrics = ServingMetrics()                 # (re)starts: its sample files cannot be opened
metrics.client_error("p", 404)
metrics.record_batch("p", "canary", 2, [2.0])
text, _ = metrics.exposition()
print(text.decode())
"""


def test_removed_metrics_folder_is_made_again_and_requests_go_on(tmp_path: Path) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert folder.is_dir()
    assert 'ml_platform_client_errors_total{pipeline="p",status="404"} 1.0' in result.stdout
    assert 'ml_platform_requests_total{pipeline="p",variant="canary",version="2"} 1.0' in (
        result.stdout
    )
