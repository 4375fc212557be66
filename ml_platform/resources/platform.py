"""Where things live: the project root, landing files and runtime state, as one resource."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import dagster as dg

from ml_platform.layout import StateLayout
from ml_platform.settings import default_root
from ml_platform.specs import PipelineSpec

__all__ = ["PlatformPaths", "default_root", "git_commit", "source_hash"]

PACKAGE_DIR = Path(__file__).resolve().parent.parent


class PlatformPaths(dg.ConfigurableResource):
    """Paths relative to one root, so a test or a second checkout never touches another's data."""

    root: str

    @property
    def root_path(self) -> Path:
        return Path(self.root)

    @property
    def state_dir(self) -> Path:
        return StateLayout(self.root_path).state

    def landing_dir(self, spec: PipelineSpec) -> Path:
        return self.root_path / spec.landing.directory

    def landing_file(self, spec: PipelineSpec, partition_key: str) -> Path:
        return self.landing_dir(spec) / f"{partition_key}.csv"

    def audit_log(self, spec: PipelineSpec) -> Path:
        return StateLayout(self.root_path).audit_log(spec.name)


def source_hash() -> str:
    """Hash of the package's own source, so code changes that git has not seen still count."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.suffix in {".py", ".yaml"} and "__pycache__" not in path.parts:
            digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def git_commit(root: Path) -> tuple[str, bool]:
    """(commit sha, dirty) of the checkout at `root`; ("unknown", True) outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True
    return sha, bool(status.strip())
