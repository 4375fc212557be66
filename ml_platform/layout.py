"""Where runtime state lives under a project root: one object, so no module spells `.ml_platform/…`.

Plain paths (no dagster, no environment): `settings.py` decides which root and which overrides
apply; this only names the places under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE_DIR = ".ml_platform"


@dataclass(frozen=True)
class StateLayout:
    """The runtime-state paths of the checkout at `root`."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def dagster_home(self) -> Path:
        return self.state / "dagster_home"

    @property
    def mlflow_db(self) -> Path:
        return self.state / "mlflow.db"

    @property
    def mlartifacts(self) -> Path:
        return self.state / "mlartifacts"

    @property
    def online_store(self) -> Path:
        return self.state / "online_store.sqlite"

    @property
    def alerts(self) -> Path:
        return self.state / "alerts.jsonl"

    def audit_log(self, pipeline: str) -> Path:
        return self.state / "audit" / f"{pipeline}.jsonl"

    @property
    def serving(self) -> Path:
        return self.state / "serving"

    @property
    def predictions(self) -> Path:
        return self.serving / "predictions"

    def prometheus(self, port: int) -> Path:
        return self.serving / f"prometheus-{port}"

    @property
    def dvc_lock(self) -> Path:
        return self.state / "dvc.filelock"

    @property
    def workspace(self) -> Path:
        return self.state / "workspace.yaml"

    @property
    def production(self) -> Path:
        return self.state / "production"
