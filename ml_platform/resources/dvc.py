"""DVC as the data ledger: record what Dagster wrote, push it, and find old versions again.

DVC takes a repository lock, and by default a second concurrent `dvc` call gives up after about
three seconds. Every call from here goes through one file lock (so the platform never races
itself) and passes `--wait-for-lock` (DVC >= 3.61), so a `dvc` started elsewhere, for example by
hand, is waited for instead of guessed at from the wording of its error. DVC's lock is an OS file
lock, released when its holder exits, so the wait ends when that command does.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from filelock import FileLock

from ml_platform.layout import StateLayout


class DvcError(RuntimeError):
    """A DVC command failed; the message carries DVC's own output."""


class DvcLedger:
    """Runs DVC in one project root, one command at a time."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.lock = FileLock(str(StateLayout(self.root).dvc_lock), timeout=600)

    @property
    def enabled(self) -> bool:
        return (self.root / ".dvc").is_dir() and (self.root / "dvc.yaml").is_file()

    def run(self, *args: str) -> str:
        """`dvc <args>` under the platform's lock, waiting for DVC's own lock if it is taken."""
        StateLayout(self.root).state.mkdir(exist_ok=True)
        command = [str(Path(sys.executable).with_name("dvc")), "--wait-for-lock", *args]
        with self.lock:
            done = subprocess.run(command, cwd=self.root, capture_output=True, text=True)
        if done.returncode != 0:
            raise DvcError(f"dvc {' '.join(args)} failed: {done.stderr.strip() or done.stdout}")
        return done.stdout

    def record(self, pipelines: list[str] | None = None) -> str:
        """`dvc commit` the stages' outputs as they are now (every stage, or only those of
        `pipelines`: a pipeline that never ran has nothing to commit), then push them."""
        targets = self.stages_of(pipelines) if pipelines is not None else []
        if pipelines is not None and not targets:
            return ""
        self.run("commit", "--force", "--quiet", *targets)
        return self.run("push", "--quiet", *targets)

    def stages_of(self, pipelines: list[str]) -> list[str]:
        """dvc.yaml's stage names for these pipelines (`<pipeline>_<stage>`)."""
        import yaml

        stages = (yaml.safe_load((self.root / "dvc.yaml").read_text()) or {}).get("stages") or {}
        return [name for name in stages if any(name.startswith(f"{p}_") for p in pipelines)]

    def cache_path(self, md5: str) -> Path:
        """Where DVC 3 keeps a file with this md5 in the local cache."""
        return self.root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]

    def fetch(self, md5: str) -> Path:
        """The cached file with this md5, pulled from the remote if needed, verified byte-exact."""
        path = self.cache_path(md5)
        if not path.exists():
            remote = self._remote_path(md5)
            if remote is None or not remote.exists():
                raise DvcError(
                    f"data version {md5} is in neither the DVC cache ({path}) nor the remote; "
                    "it cannot be restored"
                )
            path = remote
        actual = hashlib.md5(path.read_bytes()).hexdigest()
        if actual != md5:
            raise DvcError(
                f"DVC cache file {path} is corrupted: its md5 is {actual}, expected {md5}; "
                "refusing to use it (run `dvc fetch` or restore the remote)"
            )
        return path

    def _remote_path(self, md5: str) -> Path | None:
        out = self.run("remote", "list")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and "://" not in parts[1]:
                base = (self.root / ".dvc" / parts[1]).resolve()
                return base / "files" / "md5" / md5[:2] / md5[2:]
        return None

    def lock_hash(self) -> str:
        """md5 of dvc.lock: which recorded data versions a model was trained next to."""
        path = self.root / "dvc.lock"
        return hashlib.md5(path.read_bytes()).hexdigest() if path.exists() else "none"
