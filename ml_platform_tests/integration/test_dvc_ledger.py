"""DvcLedger waits for a DVC lock held by another process instead of failing or guessing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zc.lockfile  # DVC's own repository lock (a dvc dependency)

from ml_platform.resources.dvc import DvcError, DvcLedger

HOLD_SECONDS = 5.0  # longer than the ~3 s a plain `dvc` call waits before giving up


@pytest.fixture
def dvc_root(tmp_path: Path) -> Path:
    dvc = Path(sys.executable).with_name("dvc")
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def test_a_call_waits_for_a_lock_another_process_holds(dvc_root: Path):
    lock = zc.lockfile.LockFile(str(dvc_root / ".dvc" / "tmp" / "lock"))
    release = threading.Timer(HOLD_SECONDS, lock.close)
    started = time.monotonic()
    release.start()
    try:
        DvcLedger(dvc_root).run("status")
    finally:
        release.cancel()
        lock.close()
    assert time.monotonic() - started >= HOLD_SECONDS


def test_a_failing_command_raises_with_dvcs_message(dvc_root: Path):
    with pytest.raises(DvcError, match=r"(?s)dvc push no-such-target failed: .*does not exist"):
        DvcLedger(dvc_root).run("push", "no-such-target")
